"""The simulator pushes callbacks the way WeChat does: TEMPLATESENDJOBFINISH receipts after
accepted sends (seeded Status mix, exact counts), follower messages and events, signed in plain
mode and encrypted in safe mode, retried up to 3 attempts on a 500 or a slow answer, never
slowing the send path; the secrets stay masked. A tiny receiver in this file (not the project's
receiver/) checks every push with wechat.crypto and records what arrived."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from tests.fixtures.simulator import WeChatHttp
from tests.waiting import wait_until
from wechat.crypto import CallbackError, MessageCrypto, verify_signature
from wechat.events import CallbackMessage, encrypted_field, parse_message, parse_xml
from wechat.simulator.defaults import DEMO_OPENID, DEMO_ORIGINAL_ID
from wechat.simulator.process import SimulatorProcess

TOKEN = "sim-callback-token-7Hq2"
AES_KEY = "kWxPqa9Yb3Zc7Dd1Ee5Ff0Gg4Hh8Ii2Jj6Kk3Ll7Mm1"  # 43 chars: safe mode
MIX = {"success": 0.9, "failed:user block": 0.07, "failed: system failed": 0.03}


@dataclass
class Received:
    """One request the test receiver got, after its own signature/decrypt checks."""

    query: dict[str, str]
    mode: str  # "plain" | "safe"
    message: CallbackMessage | None
    error: str | None
    answered: int


@dataclass
class FakeReceiver:
    """An aiohttp app on its own thread: verifies every push with wechat.crypto, then answers
    `plan` statuses in order (then `status`) after `delay` seconds."""

    app_id: str
    url: str = ""
    status: int = 200
    delay: float = 0.0
    plan: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            query, body = dict(request.query), await request.read()
            mode = "safe" if query.get("encrypt_type") == "aes" else "plain"
            message: CallbackMessage | None = None
            error: str | None = None
            try:
                ts, nonce = query["timestamp"], query["nonce"]
                verify_signature(TOKEN, query["signature"], ts, nonce)
                if mode == "safe":
                    crypto = MessageCrypto(TOKEN, AES_KEY, self.app_id)
                    encrypted = encrypted_field(parse_xml(body))
                    body = crypto.verify_and_decrypt(query["msg_signature"], ts, nonce, encrypted)
                message = parse_message(body)
            except (CallbackError, KeyError) as exc:
                error = type(exc).__name__
            answer = 403 if error else (self.plan.pop(0) if self.plan else self.status)
            if self.delay:
                await asyncio.sleep(self.delay)
            self.received.append(Received(query, mode, message, error, answer))
            return web.Response(status=answer, text="success" if answer == 200 else "no")
        finally:
            self.in_flight -= 1

    def messages(self, *, answered: int | None = 200) -> list[CallbackMessage]:
        return [
            r.message
            for r in self.received
            if r.message is not None and (answered is None or r.answered == answered)
        ]


@pytest.fixture
def receiver(sim: SimulatorProcess) -> Iterator[FakeReceiver]:
    recv = FakeReceiver(app_id=sim.app_id)
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/wechat/callback", recv.handle)
    runner = web.AppRunner(app, handle_signals=False)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}/wechat/callback"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield recv
    sim.admin.set_callbacks(callback_url=None)  # nothing more for this receiver
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def configure(sim: SimulatorProcess, receiver: FakeReceiver, **changes: object) -> None:
    sim.admin.set_callbacks(
        callback_url=receiver.url,
        callback_token=TOKEN,
        receipt_delay_seconds=0.0,
        retry_delay_seconds=0.02,
        **changes,
    )


def send_many(wx: WeChatHttp, n: int) -> list[int]:
    token = wx.token()
    msgids = []
    for _ in range(n):
        answer = wx.send_template(token)
        assert answer["errcode"] == 0, answer
        msgids.append(answer["msgid"])
    return msgids


def expected_counts(seed: int, n: int, mix: dict[str, float] = MIX) -> Counter[str]:
    """What the simulator's seeded draws give: one `choices` draw per accepted send."""
    rng = random.Random(seed)
    return Counter(rng.choices(list(mix), list(mix.values()))[0] for _ in range(n))


# ---- receipts -------------------------------------------------------------------------------


@pytest.mark.parametrize("safe", [False, True], ids=["plain", "safe"])
def test_receipts_follow_the_seeded_mix_exactly(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver, safe: bool
) -> None:
    configure(sim, receiver, receipt_mix=MIX, seed=11, encoding_aes_key=AES_KEY if safe else None)
    msgids = send_many(wx, 120)
    counters = sim.admin.wait_callbacks_idle(5)

    want = expected_counts(11, 120)
    assert set(want) == set(MIX)  # all three Status strings really occur at this seed
    assert counters.receipts_scheduled == dict(want)
    assert counters.receipts_delivered == dict(want)
    assert counters.mode == ("safe" if safe else "plain")
    assert (counters.attempts, counters.retries, counters.gave_up) == (120, 0, 0)

    assert all(r.error is None and r.mode == counters.mode for r in receiver.received)
    got = receiver.messages()
    assert Counter(m.receipt_status_raw for m in got) == want  # literal strings, both spacings
    assert sorted(m.msg_id for m in got) == sorted(msgids)
    first = got[0]
    assert (first.kind, first.event, first.to_user, first.openid) == (
        "receipt",
        "TEMPLATESENDJOBFINISH",
        DEMO_ORIGINAL_ID,
        DEMO_OPENID,
    )
    assert "MsgID" in first.fields and "MsgId" not in first.fields
    assert Counter(m.receipt_status for m in got) == {
        "delivered": want["success"],
        "user_block": want["failed:user block"],
        "system_failed": want["failed: system failed"],
    }
    assert all(r.query["openid"] == DEMO_OPENID for r in receiver.received)
    assert len({r.query["nonce"] for r in receiver.received}) == 120  # fresh nonce per push
    assert all(abs(int(r.query["timestamp"]) - time.time()) < 30 for r in receiver.received)
    records = sim.admin.callback_pushes(kind="receipt")
    assert {p.msgid: p.status for p in records} == {m.msg_id: m.receipt_status_raw for m in got}


def test_same_seed_same_statuses_and_no_receipts_when_off(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    send_many(wx, 5)  # callbacks off: nothing scheduled
    assert sim.admin.callbacks().receipts_scheduled == {}

    configure(sim, receiver, receipt_mix={"success": 0.5, "failed:user block": 0.5}, seed=3)
    send_many(wx, 30)
    sim.admin.wait_callbacks_idle(5)
    first = [m.receipt_status_raw for m in receiver.messages()]
    sim.admin.set_callbacks(seed=3)  # re-seeds
    receiver.received.clear()
    send_many(wx, 30)
    sim.admin.wait_callbacks_idle(5)
    # Arrival order may differ (pushes run concurrently); the drawn sequence does not.
    records = sim.admin.callback_pushes(kind="receipt")
    assert [p.status for p in records[:30]] == [p.status for p in records[30:]]
    assert Counter(first) == Counter(m.receipt_status_raw for m in receiver.messages())


def test_a_slow_receiver_never_slows_the_send_path(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    receiver.delay = 0.3
    configure(sim, receiver, max_concurrency=4)
    token = wx.token()
    started = time.perf_counter()
    for _ in range(20):
        assert wx.send_template(token)["errcode"] == 0
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # 20 receipts, 4 at a time × 0.3 s, take 1.5 s: sends never wait
    assert sim.admin.callbacks().pending > 0
    counters = sim.admin.wait_callbacks_idle(10)
    assert counters.receipts_delivered == {"success": 20}
    assert receiver.max_in_flight <= 4  # bounded concurrency


# ---- retries --------------------------------------------------------------------------------


def test_a_500_is_retried_until_200(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    configure(sim, receiver)
    receiver.plan = [500, 500]
    send_many(wx, 1)
    counters = sim.admin.wait_callbacks_idle(5)
    assert counters.receipts_delivered == {"success": 1}
    assert (counters.attempts, counters.attempts_failed, counters.retries) == (3, 2, 2)
    assert [r.answered for r in receiver.received] == [500, 500, 200]
    # The same receipt (CreateTime, MsgID) each time, signed afresh (new nonce) each time.
    assert len({(m.create_time, m.msg_id) for m in receiver.messages(answered=None)}) == 1
    assert len({r.query["nonce"] for r in receiver.received}) == 3
    (record,) = sim.admin.callback_pushes()
    assert (record.outcome, record.http_statuses) == ("delivered", [500, 500, 200])


def test_gives_up_after_three_attempts_on_500(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    configure(sim, receiver, receipt_mix=MIX, seed=11)
    receiver.status = 500
    send_many(wx, 4)
    counters = sim.admin.wait_callbacks_idle(5)
    assert len(receiver.received) == 12
    assert sum(counters.receipts_failed.values()) == counters.gave_up == 4
    assert counters.receipts_delivered == {}
    assert (counters.attempts, counters.retries, counters.last_error) == (12, 8, "HTTP 500")
    assert {p.outcome for p in sim.admin.callback_pushes()} == {"failed"}


def test_a_slow_answer_counts_as_failed_and_is_retried(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    configure(sim, receiver, timeout_seconds=0.2)
    receiver.delay = 0.5
    send_many(wx, 1)
    counters = sim.admin.wait_callbacks_idle(5)
    assert counters.gave_up == 1 and counters.attempts == 3
    assert counters.last_error == "no answer within 0.2 s"
    (record,) = sim.admin.callback_pushes()
    assert record.http_statuses == [None, None, None]
    # The receiver still finishes the three requests the simulator gave up on.
    wait_until(lambda: len(receiver.received) == 3, "the receiver answered all three")
    assert [r.answered for r in receiver.received] == [200, 200, 200]


# ---- follower actions -----------------------------------------------------------------------


@pytest.mark.parametrize("safe", [False, True], ids=["plain", "safe"])
def test_follower_actions_arrive_signed_with_their_fields(
    sim: SimulatorProcess, receiver: FakeReceiver, safe: bool
) -> None:
    configure(sim, receiver, encoding_aes_key=AES_KEY if safe else None)
    admin = sim.admin
    text = admin.follower_sends_message(DEMO_OPENID, text="你好 ]]> <b>")
    click = admin.follower_clicks_menu(DEMO_OPENID, key="V1001_TODAY")
    view = admin.follower_views_url(DEMO_OPENID, url="https://example.com/a?b=1")
    unsub = admin.follower_unsubscribes(DEMO_OPENID)
    sub = admin.follower_subscribes(DEMO_OPENID, scene="123")
    for push in (text, click, view, unsub, sub):
        assert push.delivered and push.http_status == 200 and push.attempts == 1

    assert all(r.error is None for r in receiver.received)
    assert {r.mode for r in receiver.received} == {"safe" if safe else "plain"}
    got = receiver.messages()
    # What the admin call says it pushed is what arrived, field for field.
    pushed = [
        {k: str(v) for k, v in (p.fields or {}).items()} for p in (text, click, view, unsub, sub)
    ]
    assert [dict(m.fields) for m in got] == pushed
    message, clicked, viewed, left, joined = got
    assert (message.msg_type, message.fields["Content"]) == ("text", "你好 ]]> <b>")
    assert message.msg_id is not None and message.msg_id >= 2**53 and text.msgid == message.msg_id
    assert message.interaction_kind == "message:text"
    assert (clicked.event, clicked.event_key, clicked.interaction_kind) == (
        "CLICK",
        "V1001_TODAY",
        "click_menu",
    )
    assert (viewed.event, viewed.event_key, viewed.interaction_kind) == (
        "VIEW",
        "https://example.com/a?b=1",
        None,
    )
    assert (left.kind, joined.kind) == ("unsubscribe", "subscribe")
    assert joined.event_key == "qrscene_123"
    assert all(m.openid == DEMO_OPENID and m.to_user == DEMO_ORIGINAL_ID for m in got)
    counters = admin.callbacks()
    assert counters.events_delivered == {
        "message": 1,
        "click": 1,
        "view": 1,
        "unsubscribe": 1,
        "subscribe": 1,
    }


def test_unsubscribe_makes_sends_fail_43004_and_subscribe_undoes_it(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    configure(sim, receiver)
    token = wx.token()
    sim.admin.follower_unsubscribes(DEMO_OPENID)
    assert wx.send_template(token)["errcode"] == 43004
    assert sim.admin.follower(DEMO_OPENID).subscribed is False
    with pytest.raises(httpx.HTTPStatusError) as refused:
        sim.admin.follower_sends_message(DEMO_OPENID)
    assert refused.value.response.status_code == 409  # only followers can message
    sim.admin.follower_subscribes(DEMO_OPENID)
    assert wx.send_template(token)["errcode"] == 0
    assert sim.admin.wait_callbacks_idle(5).receipts_delivered == {"success": 1}

    with pytest.raises(httpx.HTTPStatusError) as unknown:
        sim.admin.follower_clicks_menu("o-nobody")
    assert unknown.value.response.status_code == 404
    new = sim.admin.follower_subscribes("o-newcomer")  # subscribe creates the follower
    assert new.delivered and sim.admin.follower("o-newcomer").subscribed


def test_messages_and_clicks_open_the_window_views_do_not(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    configure(sim, receiver)
    sim.admin.add_follower(DEMO_OPENID, last_interaction_at=None)
    custom = {"touser": DEMO_OPENID, "msgtype": "text", "text": {"content": "hi"}}

    def custom_send() -> int:
        # A fresh stable token each time: the clock jump below expires the old one.
        answer = wx.post("message/custom/send", wx.token(), json=custom).json()
        return int(answer["errcode"])

    assert custom_send() == 45015
    sim.admin.follower_views_url(DEMO_OPENID)
    assert custom_send() == 45015  # VIEW is not an interaction
    sim.admin.follower_sends_message(DEMO_OPENID)
    assert custom_send() == 0
    sim.admin.advance(49 * 3600)
    assert custom_send() == 45015
    sim.admin.follower_clicks_menu(DEMO_OPENID)
    assert custom_send() == 0


def test_actions_without_a_callback_url_change_state_and_push_nothing(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    push = sim.admin.follower_unsubscribes(DEMO_OPENID)
    assert (push.outcome, push.attempts, push.http_status) == ("dropped", 0, None)
    assert wx.send_template(wx.token())["errcode"] == 43004
    assert sim.admin.callbacks().dropped == 1


def test_follower_action_that_the_receiver_refuses_reports_each_attempt(
    sim: SimulatorProcess, receiver: FakeReceiver
) -> None:
    configure(sim, receiver)
    receiver.status = 503
    push = sim.admin.follower_sends_message(DEMO_OPENID)
    assert (push.outcome, push.http_statuses) == ("failed", [503, 503, 503])
    assert sim.admin.callbacks().events_failed == {"message": 1}


# ---- clock, reset, secrets --------------------------------------------------------------------


def test_timestamps_use_real_time_unless_the_simulator_clock_is_asked_for(
    sim: SimulatorProcess, receiver: FakeReceiver
) -> None:
    configure(sim, receiver)
    sim.admin.advance(3600)  # e.g. a test that aged its tokens
    sim.admin.follower_clicks_menu(DEMO_OPENID)
    real = receiver.received[-1]
    assert abs(int(real.query["timestamp"]) - time.time()) < 30
    assert real.message is not None and abs(real.message.create_time - time.time()) < 30

    sim.admin.set_callbacks(clock="simulator")
    sim.admin.follower_clicks_menu(DEMO_OPENID)
    moved = receiver.received[-1]
    assert abs(int(moved.query["timestamp"]) - (time.time() + 3600)) < 30


def test_reset_forgets_queued_pushes(
    sim: SimulatorProcess, wx: WeChatHttp, receiver: FakeReceiver
) -> None:
    configure(sim, receiver)
    sim.admin.set_callbacks(receipt_delay_seconds=1.0)
    send_many(wx, 3)
    assert sim.admin.callbacks().pending == 3
    sim.admin.reset()
    counters = sim.admin.callbacks()
    assert (counters.pending, counters.pushes, counters.receipts_scheduled) == (0, 0, {})
    # One more send, queued with the same delay, is due after the three: once it has
    # arrived, any of them the reset had kept would have arrived before it.
    (after,) = send_many(wx, 1)
    sim.admin.wait_callbacks_idle(5)
    assert [r.message.msg_id for r in receiver.received if r.message] == [after]
    assert len(receiver.received) == 1
    assert sim.admin.callback_config().callback_url == receiver.url  # a plain reset keeps it


def test_secrets_are_masked_and_survive_a_round_trip(
    sim: SimulatorProcess, receiver: FakeReceiver
) -> None:
    configure(sim, receiver, encoding_aes_key=AES_KEY)
    view = sim.admin.callback_config()
    assert (view.callback_token, view.encoding_aes_key, view.safe_mode) == (
        "**********",
        "**********",
        True,
    )
    with httpx.Client(base_url=sim.base_url) as http:
        raw = http.get("/_sim/callbacks/config").text
        # A GET answer posted back whole keeps the secrets (the mask means "unchanged").
        http.post("/_sim/callbacks/config", content=raw).raise_for_status()
        everything = "".join(
            http.get(path).text
            for path in ("/_sim/callbacks", "/_sim/callbacks/pushes", "/_sim/config")
        )
    assert TOKEN not in raw and AES_KEY not in raw and TOKEN not in everything
    assert sim.admin.follower_clicks_menu(DEMO_OPENID).delivered  # still signs with TOKEN
    assert receiver.received[-1].error is None
    log = sim.log_tail(100_000)
    assert TOKEN not in log and AES_KEY not in log


def test_bad_callback_settings_are_refused_without_echoing_secrets(
    sim: SimulatorProcess,
) -> None:
    with httpx.Client(base_url=sim.base_url) as http:
        no_token = http.post(
            "/_sim/callbacks/config", json={"callback_url": "http://127.0.0.1:9/cb"}
        )
        bad_key = http.post(
            "/_sim/callbacks/config",
            json={"callback_token": "t", "encoding_aes_key": "short-secret-key"},
        )
        bad_mix = http.post("/_sim/callbacks/config", json={"receipt_mix": {"success": 0.5}})
    assert no_token.status_code == bad_key.status_code == bad_mix.status_code == 400
    assert "callback_token" in no_token.text
    assert "43 characters" in bad_key.text and "short-secret-key" not in bad_key.text
    assert sim.admin.callback_config().enabled is False
