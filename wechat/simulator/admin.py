"""`SimulatorAdmin`: a typed, synchronous client of the simulator's admin API (/_sim/…), for
tests, the demo and benchmarks. Raises `httpx.HTTPStatusError` on a 4xx/5xx answer."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import TypeAdapter

from wechat.simulator.config import AccountConfig, FaultConfig
from wechat.simulator.models import (
    AccountInfo,
    CallbackConfigView,
    CallbackCounters,
    ClockInfo,
    Counters,
    FollowerIn,
    FollowerOut,
    FollowerUpsertResult,
    Health,
    MessagePage,
    PushRecord,
    SentMessage,
    TemplateSpec,
)
from wechat.simulator.robots import RobotInbox, RobotInfo

_TEMPLATES = TypeAdapter(list[TemplateSpec])
_PUSHES = TypeAdapter(list[PushRecord])
_ACCOUNTS = TypeAdapter(list[AccountInfo])
FollowerLike = FollowerIn | Mapping[str, Any]


class SimulatorAdmin:
    """`SimulatorAdmin("http://127.0.0.1:8900")`; close it, or use it as a context manager.

    It addresses the default account; `account(app_id)` gives a client of the same connection
    that addresses another one (followers, templates, messages, counters, config, faults,
    tokens, reset of that account only)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, app_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self._http = httpx.Client(base_url=self.base_url + "/_sim", timeout=timeout)
        self._params: dict[str, str] = {} if app_id is None else {"app_id": app_id}
        self._owns_http = True

    def account(self, app_id: str) -> SimulatorAdmin:
        """A client of the account `app_id` on the same connection (closing it closes
        nothing: the connection is this client's)."""
        other = SimulatorAdmin.__new__(SimulatorAdmin)
        other.base_url, other.app_id, other._http = self.base_url, app_id, self._http
        other._params, other._owns_http = {"app_id": app_id}, False
        return other

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._params:
            kwargs["params"] = {**kwargs.get("params", {}), **self._params}
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    # ---- lifecycle -----------------------------------------------------------------------

    def health(self) -> Health:
        return Health.model_validate(self._call("GET", "/health"))

    def reset(self, *, everything: bool = False) -> None:
        """Clear messages, counters, tokens, quota use, faults, clock offset; `everything`
        also restores start-up config, faults, followers and templates, and forgets the
        accounts added by `add_account`. A client of one account (`account()`) resets that
        account only, and not the shared clock."""
        self._call("POST", "/reset", json={"everything": everything})

    # ---- accounts --------------------------------------------------------------------------

    def add_account(self, app_id: str, app_secret: str, **config: Any) -> AccountInfo:
        """Serve one more account on the same host (`config`: AccountConfig's other fields,
        e.g. `daily_quota=10`): no followers or templates yet, callbacks off. 409 if its
        app_id is served already."""
        body = {**config, "app_id": app_id, "app_secret": app_secret}
        return AccountInfo.model_validate(self._call("POST", "/accounts", json=body))

    def accounts(self) -> list[AccountInfo]:
        """Every account served, the default one first (no secrets)."""
        return _ACCOUNTS.validate_python(self._call("GET", "/accounts"))

    # ---- clock, config, faults, tokens ------------------------------------------------------

    def clock(self) -> ClockInfo:
        return ClockInfo.model_validate(self._call("GET", "/clock"))

    def advance(self, seconds: float) -> ClockInfo:
        """Move simulator time forward (tokens age, windows close, days turn)."""
        return ClockInfo.model_validate(
            self._call("POST", "/clock", json={"advance_seconds": seconds})
        )

    def config(self) -> AccountConfig:
        return AccountConfig.model_validate(self._call("GET", "/config"))

    def set_config(self, **changes: Any) -> AccountConfig:
        """Change the given settings only (e.g. `daily_quota=2`)."""
        return AccountConfig.model_validate(self._call("POST", "/config", json=changes))

    def faults(self) -> FaultConfig:
        return FaultConfig.model_validate(self._call("GET", "/faults"))

    def set_faults(self, faults: FaultConfig | None = None, **fields: Any) -> FaultConfig:
        """Replace the fault profile (fields not given are off) and re-seed its RNG."""
        body = (faults or FaultConfig(**fields)).model_dump()
        return FaultConfig.model_validate(self._call("POST", "/faults", json=body))

    def rotate_tokens(self) -> None:
        """Every current token of both kinds stops working now (40001)."""
        self._call("POST", "/tokens/rotate")

    def counters(self) -> Counters:
        return Counters.model_validate(self._call("GET", "/counters"))

    # ---- followers and templates ---------------------------------------------------------------

    def add_followers(self, followers: Iterable[FollowerLike]) -> FollowerUpsertResult:
        """Upsert many followers in one request (100k at a time is fine)."""
        body = [
            f.model_dump(mode="json", exclude_unset=True) if isinstance(f, FollowerIn) else dict(f)
            for f in followers
        ]
        return FollowerUpsertResult.model_validate(self._call("POST", "/followers", json=body))

    def add_follower(self, openid: str, **fields: Any) -> FollowerUpsertResult:
        """Upsert one follower. `fields` are FollowerIn's: subscribed, blocked,
        last_interaction_at (datetime, unix seconds, ISO text; None = never),
        subscribe_authorizations. Fields left out keep their current (or default) value."""
        return self.add_followers([FollowerIn(openid=openid, **fields)])

    def follower(self, openid: str) -> FollowerOut | None:
        response = self._http.get(f"/followers/{openid}", params=self._params)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return FollowerOut.model_validate(response.json())

    def follower_count(self) -> int:
        return int(self._call("GET", "/followers", params={"count_only": 1})["total"])

    def add_template(
        self, template_id: str, keys: Iterable[str], title: str | None = None
    ) -> TemplateSpec:
        spec = TemplateSpec(template_id=template_id, keys=list(keys), title=title)
        self._call("POST", "/templates", json=spec.model_dump())
        return spec

    def templates(self) -> list[TemplateSpec]:
        return _TEMPLATES.validate_python(self._call("GET", "/templates"))

    def delete_template(self, template_id: str) -> None:
        self._call("DELETE", f"/templates/{template_id}")

    # ---- WeCom group robots (shared by all accounts) ------------------------------------------

    def add_robot(self, key: str | None = None, *, per_minute: int = 20) -> RobotInfo:
        """Register a group-robot webhook key (a random one if None; the answer carries it in
        full); an existing key keeps its messages and takes the new per-minute limit."""
        body: dict[str, Any] = {"per_minute": per_minute}
        if key is not None:
            body["key"] = key
        return RobotInfo.model_validate(self._robot_call("POST", "/robots", json=body))

    def robots(self) -> list[RobotInfo]:
        """Every known robot, keys masked."""
        return [RobotInfo.model_validate(r) for r in self._robot_call("GET", "/robots")]

    def robot_messages(self, key: str) -> RobotInbox:
        """What the robot `key` accepted since the last reset or clear, oldest first."""
        return RobotInbox.model_validate(self._robot_call("GET", f"/robots/{key}/messages"))

    def clear_robot_messages(self, key: str) -> int:
        """Forget the robot's messages and its minute window; how many messages there were."""
        return int(self._robot_call("DELETE", f"/robots/{key}/messages")["cleared"])

    def _robot_call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)  # no app_id: robots are global
        response.raise_for_status()
        return response.json()

    # ---- accepted messages ---------------------------------------------------------------

    def messages(
        self,
        *,
        openid: str | None = None,
        template_id: str | None = None,
        kind: Literal["template", "custom", "subscribe"] | None = None,
        client_msg_id: str | None = None,
        since: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> MessagePage:
        """One page of accepted messages, oldest first; `since` is the last `seq` seen."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        for name, value in (
            ("openid", openid),
            ("template_id", template_id),
            ("kind", kind),
            ("client_msg_id", client_msg_id),
            ("since", since),
        ):
            if value is not None:
                params[name] = value
        return MessagePage.model_validate(self._call("GET", "/messages", params=params))

    def iter_messages(self, *, page_size: int = 10_000, **filters: Any) -> Iterator[SentMessage]:
        """Every accepted message matching the filters, fetched page by page via `since`."""
        since = filters.pop("since", None)
        while True:
            page = self.messages(since=since, limit=page_size, **filters)
            yield from page.items
            if len(page.items) < page_size:
                return
            since = page.next_since

    # ---- callbacks -----------------------------------------------------------------------

    def callback_config(self) -> CallbackConfigView:
        """The callback settings; the token and the EncodingAESKey come back masked."""
        return CallbackConfigView.model_validate(self._call("GET", "/callbacks/config"))

    def set_callbacks(self, **changes: Any) -> CallbackConfigView:
        """Change the given callback settings only, and re-seed the receipt RNG: e.g.
        `set_callbacks(callback_url=..., callback_token=..., encoding_aes_key=...,
        receipt_mix={"success": 0.9, "failed:user block": 0.1}, seed=7)`. `callback_url=None`
        switches pushes off; `encoding_aes_key=None` is plaintext mode."""
        return CallbackConfigView.model_validate(
            self._call("POST", "/callbacks/config", json=changes)
        )

    def set_receipt_status(
        self, openids: Iterable[str], status: str = "failed:freq limit"
    ) -> CallbackConfigView:
        """Every later receipt of a send to these followers carries `status` (default WeChat's
        `failed:freq limit`) instead of a draw from `receipt_mix`; other followers' overrides
        stay. `set_callbacks(receipt_overrides={})` clears them all."""
        overrides = dict(self.callback_config().receipt_overrides)
        overrides.update(dict.fromkeys(openids, status))
        return self.set_callbacks(receipt_overrides=overrides)

    def callbacks(self) -> CallbackCounters:
        """Receipts scheduled/delivered/failed by Status, attempts, retries, pending …"""
        return CallbackCounters.model_validate(self._call("GET", "/callbacks"))

    def callback_pushes(
        self,
        *,
        kind: Literal["receipt", "message", "click", "subscribe", "unsubscribe", "view"]
        | None = None,
        since: int | None = None,
        limit: int = 100_000,
    ) -> list[PushRecord]:
        """The pushes since the last reset (after seq `since`), oldest first."""
        params: dict[str, Any] = {"limit": limit}
        if kind is not None:
            params["kind"] = kind
        if since is not None:
            params["since"] = since
        return _PUSHES.validate_python(
            self._call("GET", "/callbacks/pushes", params=params)["items"]
        )

    def wait_callbacks_idle(self, timeout: float = 10.0, *, poll: float = 0.02) -> CallbackCounters:
        """Wait until nothing is queued, awaiting a retry or in flight; the final counters.
        Raises TimeoutError (with the counters) if pushes are still pending after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            counters = self.callbacks()
            if counters.pending == 0:
                return counters
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{counters.pending} callback pushes still pending: {counters}")
            time.sleep(poll)

    def _act(self, openid: str, action: str, **body: Any) -> PushRecord:
        return PushRecord.model_validate(
            self._call("POST", f"/followers/{openid}/{action}", json=body)
        )

    def follower_sends_message(self, openid: str, text: str = "hi") -> PushRecord:
        """A text message (MsgType text, 64-bit MsgId); opens the message window (5
        customer-service sends in 48 h, by default) afresh. Returns the push
        once the receiver answered (or every attempt failed): fields, http_statuses, outcome.
        404: unknown follower; 409: not following."""
        return self._act(openid, "message", text=text)

    def follower_clicks_menu(self, openid: str, key: str = "MENU_KEY") -> PushRecord:
        """A menu click (event CLICK, EventKey = key); opens the short window (3
        customer-service sends in 1 minute, by default) afresh, not the message window."""
        return self._act(openid, "click", key=key)

    def follower_views_url(self, openid: str, url: str = "https://example.com/") -> PushRecord:
        """A menu link opened (event VIEW, EventKey = url): NOT an interaction, no window."""
        return self._act(openid, "view", url=url)

    def follower_subscribes(self, openid: str, scene: str | None = None) -> PushRecord:
        """Follow (event subscribe; with `scene`, EventKey qrscene_<scene> + Ticket): creates or
        re-subscribes the follower, whose sends then succeed again; opens the short window like
        a menu click."""
        return self._act(openid, "subscribe", scene=scene)

    def follower_unsubscribes(self, openid: str) -> PushRecord:
        """Unfollow (event unsubscribe): later sends to them answer 43004."""
        return self._act(openid, "unsubscribe")
