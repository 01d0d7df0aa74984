"""The dry run's plan (sending/plan.py) on its own: invalid rows grouped by rule without their
values, the top reasons and the rest, example messages for each kind, and the report
artifact that leaves the examples out."""

from __future__ import annotations

from typing import Any

from db.outcomes import TOP_REASONS
from sending.message import MessageSpec
from sending.plan import EXAMPLES, DryRunPlan
from tasks.report import CampaignReport

SPEC = MessageSpec(
    template_id="T",
    data={"thing1": "{nickname}", "number2": "{n}"},
    url="https://example.com/{openid}",
)


def _row(openid: str, nickname: str = "Ann", n: Any = "3") -> dict[str, Any]:
    return {"openid": openid, "nickname": nickname, "n": n}


def test_invalid_rows_count_per_rule_without_their_values() -> None:
    plan = DryRunPlan(name="c")
    for length in (21, 22, 30):
        assert plan.add(SPEC, "c", _row(f"o{length}", "秘" * length), None) == "invalid"
    assert plan.add(SPEC, "c", _row("o-sign", n="-1"), None) == "invalid"
    assert plan.invalid_reasons == {
        "data.thing1.value invalid: thing allows at most 20 characters": 3,
        "data.number2.value invalid: number allows only digits and a decimal point "
        "(no sign, no thousands separators)": 1,
    }
    text = plan.markdown()
    assert "| data.thing1.value invalid: thing allows at most 20 characters | 3 |" in text
    assert "秘" not in text and "got" not in text, "no recipient's value in the plan"


def test_the_top_reasons_are_listed_and_the_rest_summed() -> None:
    plan = DryRunPlan(name="c")
    spec = MessageSpec(template_id="T", data={f"thing{i}": f"{{c{i}}}" for i in range(8)})
    for i in range(8):
        for copy in range(i + 1):  # reason i breaks on i + 1 rows
            row = {"openid": f"o{i}-{copy}", **{f"c{k}": "ok" for k in range(8)}, f"c{i}": ""}
            plan.add(spec, "c", row, None)
    text = plan.markdown()
    assert [reason for reason, _ in plan.top_invalid()] == [
        f"data.thing{i}.value invalid: value is empty" for i in (7, 6, 5, 4, 3)
    ][:TOP_REASONS]
    assert "| other reasons | 6 |" in text  # reasons 0, 1, 2: 1 + 2 + 3 rows
    assert f"| invalid | {sum(range(1, 9))} |" in text


def test_examples_show_the_first_rows_as_rendered_and_skips_count_by_reason() -> None:
    plan = DryRunPlan(name="c", campaign_id="c-1")
    plan.add(SPEC, "c", _row("o-skip"), "unsubscribed")
    for i in range(EXAMPLES + 2):
        assert plan.add(SPEC, "c", _row(f"o{i}", nickname=f"N{i}"), None) == "would_send"
    assert [e.openid for e in plan.examples] == [f"o{i}" for i in range(EXAMPLES)]
    assert plan.examples[0].fields == {
        "thing1": "N0",
        "number2": "3",
        "link": "https://example.com/o0",
    }
    assert plan.counts() == {"would_send": EXAMPLES + 2, "skipped:unsubscribed": 1}
    assert plan.audience == EXAMPLES + 3
    text = plan.markdown()
    assert "| skipped: unsubscribed | 1 |" in text and "`c-1`" in text
    assert "1. to `o0`" in text and "   - thing1: N0" in text


def test_a_customer_service_example_shows_its_text() -> None:
    spec = MessageSpec(kind="customer_service", text="Hi {nickname}")
    plan = DryRunPlan(name="c")
    plan.add(spec, "c", _row("o1"), None)
    assert plan.examples[0].fields == {"text": "Hi Ann"}


def test_a_value_that_cannot_become_text_is_invalid_not_a_crash() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    plan = DryRunPlan(name="c")
    assert plan.add(SPEC, "c", _row("o1", n=Broken()), None) == "invalid"
    assert plan.invalid_reasons == {"could not render the message (RuntimeError)": 1}


def test_the_dry_runs_report_artifact_is_the_plan_without_examples() -> None:
    plan = DryRunPlan(name="c")
    plan.add(SPEC, "c", _row("o-secret-openid", nickname="Zed"), None)
    report = CampaignReport.build(
        campaign_id="dry-run-1",
        name="c",
        status="completed",
        reason="dry run: nothing was sent",
        counts=plan.counts(),
        errcodes={},
        seconds=1.0,
        dry_run=True,
        plan=plan,
    )
    text = report.markdown()
    assert text.startswith("# Dry run of campaign c") and "| would send | 1 |" in text
    assert "o-secret-openid" not in text and "Zed" not in text
    assert "## Example messages" not in text and "prints a few" in text
