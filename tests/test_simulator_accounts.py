"""Several accounts on one simulator host, over real HTTP: each account's tokens, followers,
templates, quota, counters, messages and faults are its own; the API finds the account from
appid+secret (token endpoints) or from the access_token (everything else), as WeChat does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from wechat.simulator.__main__ import settings_from_args
from wechat.simulator.defaults import (
    DEMO_APP_ID,
    DEMO_OPENID,
    DEMO_TEMPLATE_ID,
    DEMO_TEMPLATE_KEYS,
    demo_template_data,
)
from wechat.simulator.process import SimulatorProcess, start_simulator

B_ID, B_SECRET = "wxb0b0b0b0b0b0b0b0", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"  # from --account
C_ID, C_SECRET = "wxc0c0c0c0c0c0c0c0", "cccccccccccccccccccccccccccccccc"  # added by the admin API
B_OPENID = "o-b-follower-0001"


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorProcess]:
    with start_simulator(accounts=[(B_ID, B_SECRET)]) as running:
        yield running


@pytest.fixture
def sim(server: SimulatorProcess) -> SimulatorProcess:
    """A is the default (demo) account; B has the demo template and one follower of its own."""
    server.admin.reset(everything=True)
    b = server.admin.account(B_ID)
    b.add_template(DEMO_TEMPLATE_ID, DEMO_TEMPLATE_KEYS)
    b.add_follower(B_OPENID)
    return server


@pytest.fixture
def http(server: SimulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


def stable_token(http: httpx.Client, app_id: str, secret: str, **fields: Any) -> dict[str, Any]:
    body = {"grant_type": "client_credential", "appid": app_id, "secret": secret, **fields}
    return http.post("/cgi-bin/stable_token", json=body).json()


def classic_token(http: httpx.Client, app_id: str, secret: str) -> dict[str, Any]:
    query = {"grant_type": "client_credential", "appid": app_id, "secret": secret}
    return http.get("/cgi-bin/token", params=query).json()


def send(http: httpx.Client, token: str, openid: str) -> dict[str, Any]:
    body = {"touser": openid, "template_id": DEMO_TEMPLATE_ID, "data": demo_template_data()}
    response = http.post(
        "/cgi-bin/message/template/send", params={"access_token": token}, json=body
    )
    return response.json()


def test_each_account_gets_its_own_tokens(sim: SimulatorProcess, http: httpx.Client) -> None:
    a = stable_token(http, sim.app_id, sim.app_secret)["access_token"]
    b = stable_token(http, B_ID, B_SECRET)["access_token"]
    assert a != b
    assert stable_token(http, B_ID, B_SECRET)["access_token"] == b  # B's stable token, again
    classic_b = classic_token(http, B_ID, B_SECRET)["access_token"]
    assert classic_b not in {a, b}
    # A secret belongs to its own AppID only.
    assert stable_token(http, B_ID, sim.app_secret)["errcode"] == 40125
    assert classic_token(http, sim.app_id, B_SECRET)["errcode"] == 40001
    assert stable_token(http, "wx-nobody", B_SECRET)["errcode"] == 40013
    a_counters, b_counters = sim.admin.counters(), sim.admin.account(B_ID).counters()
    assert a_counters.tokens_issued == {"classic": 0, "stable": 1}
    assert b_counters.tokens_issued == {"classic": 1, "stable": 1}
    assert b_counters.calls["stable_token"] == 3 and b_counters.errcodes == {40125: 1}
    assert a_counters.errcodes == {40001: 1, 40013: 1}  # the unknown appid lands on the default


def test_a_token_sends_only_as_its_own_account(sim: SimulatorProcess, http: httpx.Client) -> None:
    a = stable_token(http, sim.app_id, sim.app_secret)["access_token"]
    b = stable_token(http, B_ID, B_SECRET)["access_token"]
    # B's follower is not A's: an openid of another AppID is 40003, as on WeChat.
    assert send(http, a, B_OPENID)["errcode"] == 40003
    assert send(http, b, DEMO_OPENID)["errcode"] == 40003
    assert send(http, b, B_OPENID)["errcode"] == 0
    assert send(http, a, DEMO_OPENID)["errcode"] == 0
    b_admin = sim.admin.account(B_ID)
    assert [m.openid for m in b_admin.messages().items] == [B_OPENID]
    assert [m.openid for m in sim.admin.messages().items] == [DEMO_OPENID]
    assert sim.admin.counters().errcodes == {40003: 1}
    assert b_admin.counters().errcodes == {40003: 1}
    # Templates are per account too: B without the template answers 40037 to B's token.
    b_admin.delete_template(DEMO_TEMPLATE_ID)
    assert send(http, b, B_OPENID)["errcode"] == 40037
    assert send(http, a, DEMO_OPENID)["errcode"] == 0


def test_quota_and_counters_are_per_account(sim: SimulatorProcess, http: httpx.Client) -> None:
    b_admin = sim.admin.account(B_ID)
    assert b_admin.set_config(daily_quota=2).daily_quota == 2
    assert sim.admin.config().daily_quota == 100_000  # A's is unchanged
    a = stable_token(http, sim.app_id, sim.app_secret)["access_token"]
    b = stable_token(http, B_ID, B_SECRET)["access_token"]
    assert [send(http, b, B_OPENID)["errcode"] for _ in range(3)] == [0, 0, 45009]
    assert [send(http, a, DEMO_OPENID)["errcode"] for _ in range(3)] == [0, 0, 0]
    a_counters, b_counters = sim.admin.counters(), b_admin.counters()
    assert b_counters.accepted == 2 and b_counters.errcodes == {45009: 1}
    assert a_counters.accepted == 3 and a_counters.errcodes == {}
    assert a_counters.calls["template_send"] == 3 and b_counters.calls["template_send"] == 3
    quota_used = {info.app_id: info.quota_used_today for info in sim.admin.accounts()}
    assert quota_used == {sim.app_id: 3, B_ID: 2}
    # The day turns for every account at once: the clock is shared.
    sim.admin.advance(sim.admin.clock().seconds_to_next_day + 1)
    b = stable_token(http, B_ID, B_SECRET)["access_token"]
    assert send(http, b, B_OPENID)["errcode"] == 0


def test_faults_and_rotation_are_per_account(sim: SimulatorProcess, http: httpx.Client) -> None:
    b_admin = sim.admin.account(B_ID)
    a = stable_token(http, sim.app_id, sim.app_secret)["access_token"]
    b = stable_token(http, B_ID, B_SECRET)["access_token"]
    b_admin.set_faults(minus_one_rate=1.0)
    assert send(http, b, B_OPENID)["errcode"] == -1
    assert send(http, a, DEMO_OPENID)["errcode"] == 0
    assert sim.admin.faults().minus_one_rate == 0.0
    assert b_admin.counters().faults["minus_one"] == 1
    b_admin.set_faults()
    sim.admin.rotate_tokens()  # A's tokens only
    assert send(http, a, DEMO_OPENID)["errcode"] == 40001
    assert send(http, b, B_OPENID)["errcode"] == 0


def test_accounts_added_through_the_admin_api(sim: SimulatorProcess, http: httpx.Client) -> None:
    info = sim.admin.add_account(C_ID, C_SECRET, daily_quota=1)
    assert (info.app_id, info.daily_quota, info.followers, info.templates) == (C_ID, 1, 0, 0)
    assert [a.app_id for a in sim.admin.accounts()] == [DEMO_APP_ID, B_ID, C_ID]
    with pytest.raises(httpx.HTTPStatusError) as duplicate:
        sim.admin.add_account(B_ID, "other")
    assert duplicate.value.response.status_code == 409
    c_admin = sim.admin.account(C_ID)
    c_admin.add_template("tpl-c", ["thing1"])
    c_admin.add_follower("o-c")
    c = stable_token(http, C_ID, C_SECRET)["access_token"]
    body = {"touser": "o-c", "template_id": "tpl-c", "data": {"thing1": {"value": "x"}}}
    url = "/cgi-bin/message/template/send"
    answers = [http.post(url, params={"access_token": c}, json=body).json() for _ in range(2)]
    assert [answer["errcode"] for answer in answers] == [0, 45009]
    assert c_admin.follower("o-c") is not None and sim.admin.follower("o-c") is None
    assert c_admin.health().app_id == C_ID and sim.admin.health().app_id == DEMO_APP_ID
    # An account reset keeps the others' state; a full reset forgets the added account only.
    assert send(http, stable_token(http, B_ID, B_SECRET)["access_token"], B_OPENID)["errcode"] == 0
    c_admin.reset()
    assert c_admin.messages().total == 0 and sim.admin.account(B_ID).messages().total == 1
    sim.admin.reset(everything=True)
    assert [a.app_id for a in sim.admin.accounts()] == [DEMO_APP_ID, B_ID]
    assert stable_token(http, C_ID, C_SECRET)["errcode"] == 40013
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        c_admin.counters()
    assert unknown.value.response.status_code == 404
    assert sim.admin.account(B_ID).follower_count() == 0  # start-up state: empty


def test_an_app_id_change_cannot_take_another_accounts_id(sim: SimulatorProcess) -> None:
    with pytest.raises(httpx.HTTPStatusError) as clash:
        sim.admin.account(B_ID).set_config(app_id=DEMO_APP_ID)
    assert clash.value.response.status_code == 400
    assert sim.admin.account(B_ID).config().app_id == B_ID


def test_account_flag_parsing() -> None:
    settings = settings_from_args(["--account", "wxb:sb", "--account", "wxc:sc:5"])
    assert [(a.app_id, a.app_secret, a.daily_quota) for a in settings.accounts] == [
        ("wxb", "sb", 100_000),
        ("wxc", "sc", 5),
    ]
    assert settings.account.app_id == DEMO_APP_ID
    for bad in (["--account", "wxb"], ["--account", "wxb:sb:many"]):
        with pytest.raises(SystemExit):
            settings_from_args(bad)
    with pytest.raises(SystemExit, match="served already"):
        settings_from_args(["--account", f"{DEMO_APP_ID}:x"])


def test_follower_actions_of_another_account(sim: SimulatorProcess, http: httpx.Client) -> None:
    b_admin = sim.admin.account(B_ID)
    b_admin.add_follower("o-b-quiet", last_interaction_at=None)
    b = stable_token(http, B_ID, B_SECRET)["access_token"]
    body = {"touser": "o-b-quiet", "msgtype": "text", "text": {"content": "hi"}}
    url = "/cgi-bin/message/custom/send"
    assert http.post(url, params={"access_token": b}, json=body).json()["errcode"] == 45015
    push = b_admin.follower_sends_message("o-b-quiet")
    assert push.outcome == "dropped"  # the callbacks are the default account's only
    assert http.post(url, params={"access_token": b}, json=body).json()["errcode"] == 0
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        sim.admin.follower_sends_message("o-b-quiet")  # A has no such follower
    assert unknown.value.response.status_code == 404
