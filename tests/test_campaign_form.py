"""The deployments' forms as Prefect draws and enforces them (issue 10, point 11).

Prefect's UI draws a property from the flow's parameter schema; the server checks a run's
parameters against the same schema, with the validator imported here, when a deployment has
`enforce_parameter_schema` (all of wxpush's do). tests/test_serve.py drives the real form in
a browser; these pin the schema it draws, without a server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from flows.campaign import push_campaign
from flows.digest import daily_digest
from flows.test_message import send_test_message
from tasks.params import EXAMPLE_TEMPLATE_FIELDS, CampaignParams
from wechat.simulator.defaults import DEMO_TEMPLATE_ID, DEMO_TEMPLATE_VALUES

FLOWS: dict[str, Callable[..., Any]] = {
    "Campaign": push_campaign,
    "Digest": daily_digest,
    "Test message": send_test_message,
}


def _schema(flow: Any) -> dict[str, Any]:
    return parameter_schema(flow).model_dump()


def _fields(flow: Any) -> dict[str, dict[str, Any]]:
    schema = _schema(flow)
    model = schema["properties"]["params"]["$ref"].rsplit("/", 1)[-1]
    return schema["definitions"][model]["properties"]


@pytest.mark.parametrize("heading", list(FLOWS))
def test_each_form_is_headed_in_words_not_by_the_parameter_name(heading: str) -> None:
    params = _schema(FLOWS[heading])["properties"]["params"]
    assert params["title"] == heading
    assert params["description"]


@pytest.mark.parametrize("heading", list(FLOWS))
def test_no_field_is_a_switch_with_a_none_branch(heading: str) -> None:
    """`str | None` drawn as a switch showed `Property is type "None"` and no box."""
    for name, field in _fields(FLOWS[heading]).items():
        branches = field.get("anyOf", [])
        assert not any(branch.get("type") == "null" for branch in branches), name
        assert "default" not in field or field["default"] is not None, name
        assert field.get("type") in ("string", "number", "integer", "boolean", "object", "array")


def test_the_template_fields_box_starts_with_an_example_of_the_shape() -> None:
    data = _fields(push_campaign)["data"]
    assert data["default"] == EXAMPLE_TEMPLATE_FIELDS
    assert set(EXAMPLE_TEMPLATE_FIELDS) == {key for key, _ in DEMO_TEMPLATE_VALUES}
    assert '{"key": "text"' in data["description"], "the JSON shape, in words"
    assert CampaignParams.model_fields["data"].get_default(call_default_factory=True) == {}, (
        "the example is the form's; the CLI still needs --data"
    )


def test_the_descriptions_are_in_an_operators_words() -> None:
    for name, field in CampaignParams.model_fields.items():
        text = field.description or ""
        for word in ("client_msg_id", "5xx", "ledger", "bind parameter"):
            assert word not in text, (name, word)


def _errors(params: dict[str, Any]) -> list[str]:
    """What the Prefect server says about a push-campaign run with these parameters."""
    return [e.message for e in validate({"params": params}, _schema(push_campaign))]


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"name": "n"}, "'template_id' is a required property"),
        ({"name": "n", "kind": "subscribe", "data": {"a": "b"}}, "'template_id' is a required"),
        ({"name": "n", "template_id": DEMO_TEMPLATE_ID, "data": {}}, "should be non-empty"),
        ({"name": "n", "template_id": None, "data": {"a": "b"}}, "None is not of type 'string'"),
        ({"name": "n", "kind": "customer_service"}, "'text' is a required property"),
        ({"name": "n", "template_id": "", "data": {"a": "b"}}, "should be non-empty"),
    ],
)
def test_the_server_refuses_a_message_its_kind_cannot_send(
    params: dict[str, Any], complaint: str
) -> None:
    """Refused before a run exists (before: a run that failed with a ParameterTypeError)."""
    errors = _errors(params)
    assert any(complaint in error for error in errors), errors


def test_the_server_takes_what_the_form_and_the_api_send() -> None:
    template = {"name": "n", "template_id": DEMO_TEMPLATE_ID, "data": {"thing1": "x"}}
    assert _errors(template) == []
    assert _errors({**template, "kind": "subscribe"}) == []
    assert _errors({"name": "n", "kind": "customer_service", "text": "hi {nickname}"}) == []
    nulls = ("url", "audience_sql", "campaign_id", "rate_per_second", "miniprogram_appid")
    assert _errors({**template, **dict.fromkeys(nulls)}) == [], "the API's explicit null"
    assert _errors({**template, "rate_per_second": 0.05}) != [], "the bound stays"


def test_an_empty_box_means_none_whichever_way_it_came() -> None:
    params = CampaignParams.model_validate(
        {
            "name": "n",
            "template_id": DEMO_TEMPLATE_ID,
            "data": {"thing1": "x"},
            "url": "",
            "audience_sql": "  \n",
            "campaign_id": "",
            "miniprogram_appid": " ",
        }
    )
    assert params.url is None and params.audience_sql is None
    assert params.campaign_id is None and params.miniprogram_appid is None
    with pytest.raises(ValueError, match="needs a template_id"):
        CampaignParams.model_validate({"name": "n", "template_id": " ", "data": {"a": "b"}})


def test_the_browser_test_skips_naming_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without chromium, tests/test_serve.py's browser test skips and says how to get it."""
    from tests import browser

    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    opened = browser.open_browser()
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        opened.__enter__()
