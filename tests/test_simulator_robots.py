"""The WeCom group-robot webhook of the simulator, over HTTP: a message is recorded with its
content, an unknown key is 93000, bad bodies get their errcode, 20 a minute per key on the
simulator clock (then 45009), and the admin API reads, clears and resets what was received."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from wechat.simulator.defaults import DEMO_ROBOT_KEY
from wechat.simulator.process import SimulatorProcess

ALERT = "## Campaign paused\n> campaign **spring-sale**, account wx8c…: daily quota reached"


@pytest.fixture
def http(sim: SimulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10.0) as client:
        yield client


def send(http: httpx.Client, body: Any, key: str | None = DEMO_ROBOT_KEY) -> dict[str, Any]:
    params = {} if key is None else {"key": key}
    response = http.post("/cgi-bin/webhook/send", params=params, json=body)
    assert response.status_code == 200  # WeCom answers errors as 200 + errcode
    return dict(response.json())


def markdown(content: str) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": content}}


def test_markdown_message_is_recorded_with_its_content(
    sim: SimulatorProcess, http: httpx.Client
) -> None:
    assert send(http, markdown(ALERT)) == {"errcode": 0, "errmsg": "ok"}
    text = {"content": "quota at 80 %", "mentioned_list": ["@all"], "mentioned_mobile_list": []}
    assert send(http, {"msgtype": "text", "text": text})["errcode"] == 0
    inbox = sim.admin.robot_messages(DEMO_ROBOT_KEY)
    assert [(m.msgtype, m.content) for m in inbox.items] == [
        ("markdown", ALERT),
        ("text", "quota at 80 %"),
    ]
    assert inbox.items[1].mentioned_list == ["@all"]
    assert inbox.items[0].seq < inbox.items[1].seq
    assert inbox.messages == 2 and inbox.key != DEMO_ROBOT_KEY  # the key is masked


def test_unknown_or_missing_key_is_93000(sim: SimulatorProcess, http: httpx.Client) -> None:
    assert send(http, markdown("x"), key="not-a-robot")["errcode"] == 93000
    assert send(http, markdown("x"), key=None)["errcode"] == 93000
    assert sim.admin.robot_messages(DEMO_ROBOT_KEY).items == []


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"msgtype": "voice", "voice": {"content": "x"}}, 40008),
        ({"markdown": {"content": "x"}}, 40008),
        ({"msgtype": "markdown", "markdown": {"content": ""}}, 44004),
        ({"msgtype": "text", "text": {}}, 44004),
        ({"msgtype": "markdown"}, 44004),
        (markdown("龙" * 1366), 40058),  # 4098 UTF-8 bytes > 4096
        ({"msgtype": "text", "text": {"content": "a" * 2049}}, 40058),
        ([1, 2], 40035),
    ],
)
def test_bad_body_gets_its_errcode_and_is_not_recorded(
    sim: SimulatorProcess, http: httpx.Client, body: Any, errcode: int
) -> None:
    assert send(http, body)["errcode"] == errcode
    inbox = sim.admin.robot_messages(DEMO_ROBOT_KEY)
    assert (inbox.messages, inbox.rejected) == (0, 1)


def test_content_at_the_limit_is_accepted(sim: SimulatorProcess, http: httpx.Client) -> None:
    assert send(http, markdown("a" * 4096))["errcode"] == 0
    assert send(http, {"msgtype": "text", "text": {"content": "a" * 2048}})["errcode"] == 0


def test_twenty_a_minute_per_key_on_the_simulator_clock(
    sim: SimulatorProcess, http: httpx.Client
) -> None:
    other = sim.admin.add_robot().key  # generated, returned in full once
    replies = [send(http, markdown(f"#{i}"))["errcode"] for i in range(21)]
    assert replies == [0] * 20 + [45009]
    assert send(http, markdown("other robot"), key=other)["errcode"] == 0  # limit is per key
    sim.admin.advance(61)
    assert send(http, markdown("next minute"))["errcode"] == 0
    assert sim.admin.robot_messages(DEMO_ROBOT_KEY).messages == 21


def test_admin_registers_reads_clears_and_reset_forgets(
    sim: SimulatorProcess, http: httpx.Client
) -> None:
    info = sim.admin.add_robot("team-ops-robot", per_minute=2)
    assert info.key == "team-ops-robot"
    assert [send(http, markdown("a"), key="team-ops-robot")["errcode"] for _ in range(3)] == [
        0,
        0,
        45009,
    ]
    assert all(r.key.endswith("********") for r in sim.admin.robots())
    assert sim.admin.clear_robot_messages("team-ops-robot") == 2
    assert sim.admin.robot_messages("team-ops-robot").items == []
    assert send(http, markdown("b"), key="team-ops-robot")["errcode"] == 0  # window cleared too
    sim.admin.reset()  # messages cleared, key kept
    assert sim.admin.robot_messages("team-ops-robot").messages == 0
    sim.admin.reset(everything=True)  # back to the demo key only
    assert send(http, markdown("c"), key="team-ops-robot")["errcode"] == 93000
    with pytest.raises(httpx.HTTPStatusError) as raised:
        sim.admin.robot_messages("team-ops-robot")
    assert raised.value.response.status_code == 404
    assert len(sim.admin.robots()) == 1


def test_reset_of_one_account_leaves_robots_alone(
    sim: SimulatorProcess, http: httpx.Client
) -> None:
    send(http, markdown("kept"))
    sim.admin.account(sim.app_id).reset()
    assert sim.admin.robot_messages(DEMO_ROBOT_KEY).messages == 1
