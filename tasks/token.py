"""Access tokens: read from the block, refresh under one lock, compare-and-expire on refusal.

The `wechat-access-token/<app>` block holds the token every sender uses. Three entry points:

- `get_access_token(app)`: a sender's once-per-batch read. Returns the block's token; if the
  block is missing or the token is inside the safety margin, refreshes (locked path below).
- `refresh_if_current(app, failed_token)`: a sender that got a REFRESH-class errcode asks
  for a better token (docs/architecture.md, decision 3). Only if the block *still* holds the
  token that failed is a new one fetched; otherwise the block's newer token comes back. Never
  `force_refresh`; and if WeChat hands back the very token it just refused, that is a
  configuration problem (`TokenRefusedAgain`), never a loop.
- `ensure_token` / `verify_token`: what the `refresh_access_token` flow runs.

Concurrent refreshes are made safe by one lock: a Prefect global concurrency limit of 1 per
app (`wxpush-token-refresh-<app>`), the cross-process lock, under which the block is re-read
before anything is fetched, so whoever waited finds the winner's token and fetches nothing.
This module keeps no token in memory between calls: sharing one refresh among the concurrent
refusals of a campaign run is `sending.sender.TokenSource`'s job (docs/tokens.md).

Nothing here logs, raises or returns a token as a plain string.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.exceptions import MissingContextError, ObjectNotFound
from pydantic import BaseModel, Field, SecretStr

from tasks.blocks import WeChatAccessToken, WeChatApp
from wechat.client import WeChatClient
from wechat.errors import ConfigError, RetryableError, TokenError

Action = Literal["fetched", "refreshed", "kept"]

#: stable_token (normal mode) hands out a new token only in the last 300 s of the old one.
STABLE_ROLL_SECONDS = 300
#: The refresh flow's default: refresh once less than this is left. Equal to the stable
#: roll window, so a stable refresh inside the margin really gets a new token.
REFRESH_MARGIN_SECONDS = 300
#: A sender's default: only refresh itself if the refresh flow has fallen behind.
SENDER_MARGIN_SECONDS = 60
#: How long a caller waits for the cross-process lock before giving up (RETRY class).
LOCK_TIMEOUT_SECONDS = 90.0
#: Lease on the lock slot; Prefect's minimum. A crashed holder frees it after this.
LOCK_LEASE_SECONDS = 60.0

_module_logger = logging.getLogger("wxpush.token")


# -- errors ------------------------------------------------------------------------------


class AppNotConfigured(ConfigError):
    """There is no `wechat-app` block of that name: run `wxpush setup`."""


def _prefect_server() -> str:
    """Which Prefect server a block was looked for on: without PREFECT_API_URL, Prefect
    starts a temporary one of its own, which is rarely where the blocks are."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return f"the Prefect server at {url}"
    return (
        "Prefect's temporary local server (PREFECT_API_URL is not set; to use the server "
        "`wxpush serve` started: export PREFECT_API_URL=http://127.0.0.1:4200/api)"
    )


class TokenLockMissing(ConfigError):
    """The global concurrency limit that serialises refreshes does not exist."""


class TokenRefusedAgain(ConfigError):
    """WeChat refused a token and then handed the same one back (or refused its successor)."""


class TokenLockUnavailable(RetryableError):
    """The cross-process lock could not be taken: busy too long, or Prefect unreachable."""


# -- results -----------------------------------------------------------------------------


class RefreshResult(BaseModel):
    """What a refresh run did; carries no secret, so it may be shown and stored."""

    app: str
    action: Action = Field(
        description="fetched: there was no token; refreshed: replaced it; kept: left it."
    )
    expires_at: datetime
    fetched_at: datetime
    verified: bool = Field(
        default=False, description="WeChat accepted the token in a check call during this run."
    )


@dataclass(frozen=True)
class TokenOutcome:
    """A token plus what was done to get it (internal: it holds the secret)."""

    action: Action
    token: WeChatAccessToken
    note: str = ""

    def result(self, app: str, *, verified: bool = False) -> RefreshResult:
        """The secret-free summary."""
        return RefreshResult(
            app=app,
            action=self.action,
            expires_at=self.token.expires_at,
            fetched_at=self.token.fetched_at,
            verified=verified,
        )


@dataclass
class TokenStats:
    """Process counters of the costly steps (WeChat fetches, block saves, lock acquisitions),
    so tests and benchmarks can compare snapshots; they hold no token and decide nothing."""

    fetches: int = 0
    saves: int = 0
    lock_acquisitions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, name: Literal["fetches", "saves", "lock_acquisitions"]) -> None:
        """Add one; callers run on several threads."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> TokenStats:
        """A copy, for before/after comparisons."""
        with self._lock:
            return TokenStats(self.fetches, self.saves, self.lock_acquisitions)


stats = TokenStats()


# -- names -------------------------------------------------------------------------------


def lock_name(app: str) -> str:
    """The global concurrency limit that serialises token refreshes of one app."""
    return f"wxpush-token-refresh-{app}"


def _log() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The run logger inside a flow/task run, the module logger anywhere else."""
    try:
        return get_run_logger()
    except MissingContextError:
        return _module_logger


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the cross-process lock --------------------------------------------------------------


@asynccontextmanager
async def _refresh_lock(app: str) -> AsyncIterator[None]:
    """Hold the app's global concurrency slot; a missing limit is a clear ConfigError."""
    name = lock_name(app)
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(
                concurrency(
                    name,
                    occupy=1,
                    strict=True,
                    timeout_seconds=LOCK_TIMEOUT_SECONDS,
                    lease_duration=LOCK_LEASE_SECONDS,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except ConcurrencySlotAcquisitionError as exc:
            if "must be created" in str(exc):
                raise TokenLockMissing(
                    f"The Prefect global concurrency limit {name!r} does not exist, so token "
                    f"refreshes for app {app!r} cannot be serialised. Run `wxpush setup --app "
                    f"{app}` (or `prefect gcl create {name} --limit 1`)."
                ) from exc
            raise TokenLockUnavailable(f"could not acquire the token lock {name!r}: {exc}") from exc
        except TimeoutError as exc:
            raise TokenLockUnavailable(
                f"waited {LOCK_TIMEOUT_SECONDS:.0f} s for the token lock {name!r}; another "
                "refresh is stuck or the Prefect API is slow"
            ) from exc
        stats.count("lock_acquisitions")
        yield


# -- block I/O and the WeChat call ---------------------------------------------------------


async def load_app(app: str, client: PrefectClient | None = None) -> WeChatApp:
    """The app's `wechat-app` block, or `AppNotConfigured` saying how to create it."""
    try:
        return await WeChatApp.aload(app, client=client)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            raise AppNotConfigured(
                f"There is no wechat-app block named {app!r} on {_prefect_server()}. Run "
                f"`wxpush setup --app {app}` with the AppID and AppSecret, or create it in "
                "the Prefect UI (Blocks → WeChat App)."
            ) from None
        raise


async def read_token(app: str, client: PrefectClient | None = None) -> WeChatAccessToken | None:
    """The app's `wechat-access-token` block, or None if there is none yet."""
    try:
        token = await WeChatAccessToken.aload(app, client=client)
    except ValueError as exc:
        if isinstance(exc.__cause__, ObjectNotFound):
            return None
        raise
    return token


async def _fetch(app: str, block: WeChatApp) -> WeChatAccessToken:
    """One token call to WeChat, as the app block says (stable normal mode or classic)."""
    if block.kind == "wecom":
        raise ConfigError(
            f"wechat-app/{app} is a WeCom app: WeCom tokens (gettoken) are not supported by "
            "the token path yet"
        )
    stats.count("fetches")
    async with WeChatClient(block.api_base_url, kind=block.kind) as client:
        if block.token_mode == "classic":
            issued = await client.classic_token(block.app_id, block.app_secret)
        else:
            issued = await client.stable_token(block.app_id, block.app_secret)
    return WeChatAccessToken.from_token(issued)


async def _save(app: str, token: WeChatAccessToken, client: PrefectClient) -> None:
    await token.asave(app, overwrite=True, client=client)
    stats.count("saves")


# -- the locked refresh --------------------------------------------------------------------


async def _locked_refresh(
    app: str, *, stale: SecretStr | None, margin_seconds: float
) -> TokenOutcome:
    """Under the app's lock: re-read the block; keep it if still good, else fetch and save.

    "Good" means not the `stale` token (compare-and-expire) and more than `margin_seconds`
    left. Every caller that needs a refresh gets here; the lock lets one in at a time, in
    this process and in any other, and the re-read makes all but the first keep its token.
    """
    log = _log()
    async with _refresh_lock(app), get_client() as client:
        current = await read_token(app, client)
        if current is not None and not current.same_token(stale) and current.usable(margin_seconds):
            note = "another caller already refreshed it"
            log.info("Token of app %r: %s; it expires at %s.", app, note, _ts(current.expires_at))
            return TokenOutcome("kept", current, note)
        app_block = await load_app(app, client)
        fresh = await _fetch(app, app_block)
        if stale is not None and fresh.same_token(stale):
            raise TokenRefusedAgain(
                f"WeChat refused the access_token of app {app!r} and then handed the very same "
                f"token back from {_endpoint(app_block)}. Retrying cannot help. Check that "
                f"wechat-app/{app} holds the right AppID/AppSecret for the account being called "
                "and api_base_url points at the right server, that no other system uses "
                "stable_token with force_refresh or the token of another account, and that "
                "the API in question accepts this kind of token."
            )
        if current is None:
            action: Action = "fetched"
            note = "there was no token yet"
        elif current.same_token(fresh.access_token):
            action = "kept"
            note = (
                "WeChat returned the same token with a new expiry (stable_token only issues a "
                f"new token in the last {STABLE_ROLL_SECONDS} s of the old one's life)"
            )
        else:
            action = "refreshed"
            note = "the old token was refused" if stale is not None else "it was expiring"
        await _save(app, fresh, client)
        log.info(
            "Token of app %r %s (%s): new expiry %s (%d s from now).",
            app,
            action,
            note,
            _ts(fresh.expires_at),
            int(fresh.remaining().total_seconds()),
        )
        return TokenOutcome(action, fresh, note)


def _endpoint(block: WeChatApp) -> str:
    path = "/cgi-bin/token" if block.token_mode == "classic" else "/cgi-bin/stable_token"
    return f"{block.api_base_url}{path}"


async def _effective_margin(app: str, margin_seconds: float, current: WeChatAccessToken) -> float:
    """Never ask a stable token for more margin than a refresh can deliver.

    stable_token answers with the *same* token until the last 300 s of its life, so a
    margin above that would only re-fetch the same token on every call (docs/tokens.md).
    """
    if margin_seconds <= STABLE_ROLL_SECONDS or not current.usable(STABLE_ROLL_SECONDS):
        return margin_seconds
    app_block = await load_app(app)
    return STABLE_ROLL_SECONDS if app_block.token_mode == "stable" else margin_seconds


# -- public API: plain async functions ----------------------------------------------------


async def ensure_token(
    app: str = "default",
    margin_seconds: float = REFRESH_MARGIN_SECONDS,
    *,
    keep_on_transient_error: bool = False,
) -> TokenOutcome:
    """The block's token if more than `margin_seconds` are left, else a refreshed one.

    With `keep_on_transient_error`, a refresh that fails with a RETRY-class error (WeChat
    or the lock unreachable) returns the current token instead, as long as it has not
    expired: a sender should not fail a batch over a refresh that could wait.
    """
    if margin_seconds < 0:
        raise ValueError("margin_seconds must be >= 0")
    current = await read_token(app)
    if current is not None and not current.usable(margin_seconds):
        margin_seconds = await _effective_margin(app, margin_seconds, current)
    if current is not None and current.usable(margin_seconds):
        return TokenOutcome("kept", current, f"{int(current.remaining().total_seconds())} s left")
    _log().info(
        "Token of app %r %s; refreshing.",
        app,
        "is missing" if current is None else f"expires at {_ts(current.expires_at)}",
    )
    try:
        return await _locked_refresh(app, stale=None, margin_seconds=margin_seconds)
    except RetryableError as exc:
        if not keep_on_transient_error or current is None or not current.usable():
            raise
        _log().warning(
            "Could not refresh the token of app %r (%s); using the current one, which "
            "expires at %s.",
            app,
            exc,
            _ts(current.expires_at),
        )
        return TokenOutcome("kept", current, "refresh failed; still valid")


async def get_access_token(
    app: str = "default", margin_seconds: float = SENDER_MARGIN_SECONDS
) -> SecretStr:
    """A usable token for `app` (read once per batch, not per message).

    Refreshes if the block has none or less than `margin_seconds` remain; if that refresh
    fails transiently, the current token is returned while it is still valid.
    """
    outcome = await ensure_token(app, margin_seconds, keep_on_transient_error=True)
    return outcome.token.access_token


async def compare_and_expire(app: str, failed_token: SecretStr | str) -> TokenOutcome:
    """`refresh_if_current`, with what was done (the refresh flow reports it)."""
    failed = failed_token if isinstance(failed_token, SecretStr) else SecretStr(failed_token)
    return await _locked_refresh(app, stale=failed, margin_seconds=0)


async def refresh_if_current(app: str, failed_token: SecretStr | str) -> SecretStr:
    """A better token after WeChat refused `failed_token` (REFRESH class); see module doc.

    Retry the refused message once with the returned token; if that fails too, record
    the failure rather than calling this again in a loop.
    """
    return (await compare_and_expire(app, failed_token)).token.access_token


async def verify_token(app: str = "default") -> TokenOutcome:
    """Ask WeChat whether the block's token works; compare-and-expire it if refused.

    A successor that is refused as well raises `TokenRefusedAgain`: no loop.
    """
    current = await read_token(app)
    if current is None:
        raise AppNotConfigured(f"There is no wechat-access-token block named {app!r} to verify.")
    app_block = await load_app(app)
    async with WeChatClient(app_block.api_base_url, kind=app_block.kind) as client:
        try:
            await client.check_token(current.access_token)
            return TokenOutcome("kept", current, "WeChat accepted it")
        except TokenError as exc:
            _log().warning(
                "WeChat refused the token of app %r (errcode %s); compare-and-expire.",
                app,
                exc.errcode,
            )
        outcome = await compare_and_expire(app, current.access_token)
        try:
            await client.check_token(outcome.token.access_token)
        except TokenError as exc:
            raise TokenRefusedAgain(
                f"WeChat refused the token of app {app!r}, and its replacement too (errcode "
                f"{exc.errcode}). Check the AppID/AppSecret and api_base_url of "
                f"wechat-app/{app}."
            ) from None
    return outcome


# -- Prefect tasks: thin wrappers ---------------------------------------------------------


async def retry_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a token task only on RETRY-class errors (timeouts, 5xx, a busy lock).

    Async on purpose: in an async task `state.result()` is dispatched to its async twin
    and returns a coroutine, so a sync condition would never see the exception.
    """
    outcome = await state.aresult(raise_on_failure=False)
    return isinstance(outcome, RetryableError)


_TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "persist_result": False,  # a result holding a SecretStr must never be pickled to disk
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": retry_transient,
}


@task(name="get-access-token", **_TASK_OPTIONS)
async def get_access_token_task(
    app: str = "default", margin_seconds: float = SENDER_MARGIN_SECONDS
) -> SecretStr:
    """Task form of `get_access_token`."""
    return await get_access_token(app, margin_seconds)


@task(name="refresh-if-current", **_TASK_OPTIONS)
async def refresh_if_current_task(app: str, failed_token: SecretStr) -> SecretStr:
    """Task form of `refresh_if_current`."""
    return await refresh_if_current(app, failed_token)


@task(name="ensure-token", task_run_name="ensure-token-{app}", **_TASK_OPTIONS)
async def ensure_token_task(app: str, margin_seconds: float) -> RefreshResult:
    """Refresh if missing or inside the margin; returns a secret-free summary."""
    return (await ensure_token(app, margin_seconds)).result(app)


@task(name="verify-token", task_run_name="verify-token-{app}", **_TASK_OPTIONS)
async def verify_token_task(app: str) -> RefreshResult:
    """Check the token with WeChat; compare-and-expire if refused."""
    return (await verify_token(app)).result(app, verified=True)
