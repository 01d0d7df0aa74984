"""A test send before the campaign: `wxpush campaign test` and the `send-test-message`
deployment send the campaign's message to a few OpenIDs through the campaign's send path,
filled from each follower's `recipients` row or sample values, and never touch a ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from cli.main import app as cli
from tasks.params import TestSendParams
from tasks.test_send import SAMPLE_BY_TYPE, SAMPLE_TEXT, message_of, sample_row
from tests.campaign_helpers import DATA
from wechat.fields import check_field, validate_template_data
from wechat.simulator.defaults import DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES

REPO = Path(__file__).resolve().parents[1]
#: An OpenID the simulator follows but `recipients` does not hold: rendered with samples.
STRANGER = "oTestSendStranger0000000000001"


def _cli_args(*openids: str) -> list[str]:
    return [
        *("campaign", "test", "--template-id", DEMO_TEMPLATE_ID),
        *[f"--data={k}={v}" for k, v in DATA.items()],
        *[f"--openid={openid}" for openid in openids],
    ]


def _sendable_recipient(engine: Engine, app_id: str) -> dict[str, Any]:
    """A seeded follower the simulator accepts and whose nickname fits `thing1`."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT openid, nickname FROM recipients WHERE app_id = :a AND subscribed "
                "AND blocked IS NULL ORDER BY openid"
            ),
            {"a": app_id},
        ).mappings()
        for row in rows:
            if not validate_template_data(
                {**dict(DEMO_TEMPLATE_VALUES), "thing1": row["nickname"]}
            ):
                return dict(row)
    raise AssertionError("the seeded audience has a sendable follower")


def _table_rows(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- no Prefect needed --------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "value"), sorted(SAMPLE_BY_TYPE.items()))
def test_every_sample_value_fits_its_field_type(kind: str, value: str) -> None:
    assert check_field(f"{kind}1", value) is None


def test_sample_values_fill_what_the_form_gives_then_fit_the_field() -> None:
    params = TestSendParams(
        openids=["o1"],
        template_id="T",
        data={"thing1": "{nickname}", "time3": "{shipped_at}", "first": "{city}", "x1": "hi"},
        url="https://example.com/{order_no}",
        sample_values={"city": "上海", "unused": "x"},
    )
    samples = sample_row(message_of(params), params.sample_values)
    assert samples == {
        "nickname": SAMPLE_BY_TYPE["thing"],
        "shipped_at": SAMPLE_BY_TYPE["time"],
        "city": "上海",
        "order_no": SAMPLE_TEXT,
    }


def test_the_form_needs_an_openid_and_drops_repeats() -> None:
    with pytest.raises(ValueError, match="openids"):
        TestSendParams(openids=[], template_id="T", data={"thing1": "x"})
    with pytest.raises(ValueError, match="OpenID cannot be empty"):
        TestSendParams(openids=[" "], template_id="T", data={"thing1": "x"})
    assert TestSendParams(openids=["a", "a ", "b"], template_id="T", data={"k": "v"}).openids == [
        "a",
        "b",
    ]


def test_a_test_send_without_its_template_says_message_not_campaign() -> None:
    """The refusal is shared with campaigns and digests: its words fit all three."""
    with pytest.raises(ValueError, match="a template message needs a template_id") as refused:
        TestSendParams(openids=["a"], data={"thing1": "x"})
    assert "campaign" not in str(refused.value)
    with pytest.raises(ValueError, match="a customer_service message needs a text"):
        TestSendParams(openids=["a"], kind="customer_service")


def test_the_deployment_is_declared_like_push_campaign() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    found = {d["name"]: d for d in config["deployments"]}
    entry, campaign = found["send-test-message"], found["push-campaign"]
    assert entry["entrypoint"] == "flows.test_message.send_test_message"
    assert entry["enforce_parameter_schema"] is True
    assert entry["work_pool"] == campaign["work_pool"]
    assert not entry.get("schedules"), "manual, like push-campaign"
    assert not entry.get("parameters"), "the form starts from the flow's own defaults"

    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    # The module form, as the deployment names it: the file form (`flows/x.py:f`) would put
    # flows/ on sys.path for the rest of the session, and flows/token.py would then shadow
    # the standard library's `token` module in every child process spawned after it.
    flow = load_flow_from_entrypoint("flows.test_message.send_test_message")
    schema = parameter_schema(flow).model_dump()
    assert schema["required"] == ["params"]
    fields = schema["definitions"]["TestSendParams"]["properties"]
    assert {"openids", "template_id", "data", "sample_values", "app", "kind", "url"} <= set(fields)
    assert not {"window_hours", "batch_size", "dry_run", "campaign_id"} & set(fields)


# -- against the simulator and the Prefect harness ------------------------------------------------


@pytest.mark.harness
def test_a_test_send_reaches_exactly_the_openids_and_writes_no_ledger(
    audience: Any, db_engine: Engine, sim: Any
) -> None:
    known = _sendable_recipient(db_engine, sim.app_id)
    sim.admin.add_followers([{"openid": STRANGER, "subscribed": True}])
    before = sim.admin.counters().accepted
    result = CliRunner().invoke(
        cli, [*_cli_args(known["openid"], STRANGER), "--app", audience.name]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith(f"{known['openid']}: sent, msgid ")
    assert "(filled from recipient row)" in lines[0]
    assert lines[1].startswith(f"{STRANGER}: sent, msgid ") and "sample values" in lines[1]
    messages = {m.openid: m for m in sim.admin.iter_messages()}
    assert sim.admin.counters().accepted - before == 2
    assert set(messages) == {known["openid"], STRANGER}
    assert messages[known["openid"]].data["thing1"] == known["nickname"]
    assert messages[STRANGER].data["thing1"] == SAMPLE_BY_TYPE["thing"]
    assert messages[STRANGER].data["time3"] == DATA["time3"], "constant fields as given"
    assert _table_rows(db_engine, "deliveries") == 0
    assert _table_rows(db_engine, "campaigns") == 0


@pytest.mark.harness
def test_a_refused_openid_says_why_and_exits_1(audience: Any, db_engine: Engine, sim: Any) -> None:
    known = _sendable_recipient(db_engine, sim.app_id)
    unknown = "oNotAFollowerOfThisApp00000001"
    result = CliRunner().invoke(cli, [*_cli_args(unknown, known["openid"]), "--app", audience.name])
    assert result.exit_code == 1, result.output
    assert f"{unknown}: REFUSED, errcode 40003 (invalid openid" in result.output
    assert "use the OpenID of a follower of this account" in result.output
    assert f"{known['openid']}: sent, msgid " in result.output, "one refusal stops no other"
    assert "Traceback" not in result.output
    assert [m.openid for m in sim.admin.iter_messages()] == [known["openid"]]
    assert _table_rows(db_engine, "deliveries") == 0
    assert _table_rows(db_engine, "campaigns") == 0


@pytest.mark.harness
def test_a_message_breaking_the_field_rules_is_refused_before_wechat(
    audience: Any, sim: Any
) -> None:
    too_long = "超过二十个字符的商品名称超过二十个字符的商品名称"
    args = [*_cli_args(STRANGER), "--app", audience.name, f"--sample=nickname={too_long}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert f"{STRANGER}: REFUSED, not sent (breaks WeChat's field rules: data.thing1" in (
        result.output
    )
    assert sim.admin.counters().accepted == 0
