"""Customer-service message counts over real HTTP, on the simulator's clock (no sleeps): a
follower's message allows 5 sends within 48 h, a menu click or a follow 3 within 1 minute;
beyond the count 45047, outside every window 45015. A new interaction of a kind starts its
count afresh; the short window is used first. Public source: WeChat's customer-service
message rules, https://developers.weixin.qq.com/doc/offiaccount/Customer_Service/Customer_Service_Messages.html
"""

from __future__ import annotations

import re

from tests.fixtures.simulator import WeChatHttp
from wechat.simulator.process import SimulatorProcess

OPENID = "o-cs-limits"
RID = re.compile(r" rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}$")
HOUR = 3600


def send(wx: WeChatHttp, openid: str = OPENID) -> dict:
    """One text by custom/send, with a fresh token (clock jumps outlive the old one)."""
    body = {"touser": openid, "msgtype": "text", "text": {"content": "您的订单已发货"}}
    return wx.post("message/custom/send", wx.token(), json=body).json()


def codes(wx: WeChatHttp, n: int, openid: str = OPENID) -> list[int]:
    return [int(send(wx, openid)["errcode"]) for _ in range(n)]


def left(sim: SimulatorProcess, openid: str = OPENID) -> int:
    follower = sim.admin.follower(openid)
    assert follower is not None
    return follower.custom_sends_left


def quiet_follower(sim: SimulatorProcess, openid: str = OPENID) -> None:
    """A follower who never interacted: no window is open."""
    sim.admin.add_follower(openid, last_interaction_at=None)


def test_a_message_allows_five_sends_then_45047(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    quiet_follower(sim)
    assert codes(wx, 1) == [45015]
    sim.admin.follower_sends_message(OPENID)
    assert left(sim) == 5
    assert codes(wx, 5) == [0] * 5
    refused = send(wx)
    assert refused["errcode"] == 45047
    assert refused["errmsg"].startswith("out of response count limit"), refused
    assert RID.search(refused["errmsg"]), refused
    assert left(sim) == 0
    assert sim.admin.messages(openid=OPENID, kind="custom").total == 5, "refusals not recorded"
    assert sim.admin.counters().errcodes == {45015: 1, 45047: 1}

    sim.admin.advance(HOUR)
    assert codes(wx, 1) == [45047], "the count does not come back with time inside the window"
    sim.admin.follower_sends_message(OPENID, text="还在吗？")
    assert codes(wx, 6) == [0] * 5 + [45047], "a new message starts the count afresh"


def test_the_48_hour_window_still_closes_with_sends_left(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    quiet_follower(sim)
    sim.admin.follower_sends_message(OPENID)
    assert codes(wx, 2) == [0, 0]
    sim.admin.advance(48 * HOUR - 5)
    assert codes(wx, 1) == [0]
    sim.admin.advance(10)
    assert left(sim) == 0
    assert codes(wx, 1) == [45015], "out of time is 45015, not 45047"
    sim.admin.follower_sends_message(OPENID)
    assert codes(wx, 5) == [0] * 5


def test_a_menu_click_allows_three_sends_within_a_minute(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    quiet_follower(sim)
    sim.admin.follower_clicks_menu(OPENID, key="ORDER_STATUS")
    follower = sim.admin.follower(OPENID)
    assert follower is not None and follower.last_event_at is not None
    assert follower.last_interaction_at is None, "a click is not a message"
    assert follower.custom_sends_left == 3
    assert codes(wx, 4) == [0, 0, 0, 45047]

    sim.admin.advance(30)
    sim.admin.follower_clicks_menu(OPENID)
    assert codes(wx, 4) == [0, 0, 0, 45047], "a new click starts the count afresh"
    sim.admin.advance(61)
    assert codes(wx, 1) == [45015], "the click's minute is over"
    sim.admin.follower_clicks_menu(OPENID)
    assert codes(wx, 1) == [0]


def test_a_follow_allows_three_sends_within_a_minute(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    newcomer = "o-cs-newcomer"
    sim.admin.follower_subscribes(newcomer, scene="poster")
    follower = sim.admin.follower(newcomer)
    assert follower is not None and follower.subscribed
    assert follower.last_interaction_at is None and follower.custom_sends_left == 3
    assert codes(wx, 4, newcomer) == [0, 0, 0, 45047]
    sim.admin.advance(61)
    assert codes(wx, 1, newcomer) == [45015]

    sim.admin.follower_unsubscribes(newcomer)
    assert codes(wx, 1, newcomer) == [43004], "an unfollow is refused before any count"
    sim.admin.follower_subscribes(newcomer)  # following again opens a fresh minute
    assert codes(wx, 4, newcomer) == [0, 0, 0, 45047]


def test_the_short_window_is_used_first_and_never_eats_the_messages_count(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    quiet_follower(sim)
    sim.admin.follower_sends_message(OPENID)
    assert codes(wx, 2) == [0, 0]  # message window: 3 left
    sim.admin.follower_clicks_menu(OPENID)
    assert left(sim) == 3 + 3
    assert codes(wx, 3) == [0, 0, 0]  # the click's three
    assert left(sim) == 3, "the message window still has its three"
    sim.admin.advance(61)  # the click's minute is over; the message's 48 h are not
    assert codes(wx, 4) == [0, 0, 0, 45047]
    assert sim.admin.messages(openid=OPENID, kind="custom").total == 8


def test_the_counts_are_account_settings(sim: SimulatorProcess, wx: WeChatHttp) -> None:
    config = sim.admin.config()
    assert (config.custom_message_limit, config.custom_window_hours) == (5, 48)
    assert (config.custom_event_limit, config.custom_event_seconds) == (3, 60)
    sim.admin.set_config(custom_message_limit=2, custom_event_limit=1, custom_event_seconds=300)
    quiet_follower(sim)
    sim.admin.follower_sends_message(OPENID)
    assert codes(wx, 3) == [0, 0, 45047]
    sim.admin.follower_clicks_menu(OPENID)
    sim.admin.advance(240)  # inside the 5 minutes now configured
    assert codes(wx, 2) == [0, 45047]


def test_a_seeded_last_interaction_counts_as_a_message(
    sim: SimulatorProcess, wx: WeChatHttp
) -> None:
    """Followers seeded through the admin API (the demo, campaigns' audiences) get the
    message window from their `last_interaction_at`; setting it again restores the count."""
    sim.admin.add_follower(OPENID)  # new: last interaction = now
    assert left(sim) == 5
    assert codes(wx, 6) == [0] * 5 + [45047]
    sim.admin.add_follower(OPENID, blocked=None)  # other fields leave the count alone
    assert codes(wx, 1) == [45047]
    clock = sim.admin.clock()
    sim.admin.add_follower(OPENID, last_interaction_at=clock.now - 47 * HOUR)
    assert codes(wx, 6) == [0] * 5 + [45047]
