"""The background sender of callback pushes: takes due pushes from the `CallbackOutbox`, signs
(and in safe mode encrypts) each attempt as WeChat does, POSTs it to the server URL with an
aiohttp session, and retries like WeChat (3 attempts when no HTTP 200 comes within 5 s, both
configurable). At most `max_concurrency` queued pushes are in flight at once; the send path
only ever appends to the outbox, so it is never slowed by a slow receiver."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from wechat.crypto import MessageCrypto, signed_query
from wechat.events import to_xml
from wechat.simulator.callbacks import CallbackOutbox, Push

XML_CONTENT_TYPE: Final = "text/xml"


@functools.lru_cache(maxsize=8)
def _crypto(token: str, encoding_aes_key: str, app_id: str) -> MessageCrypto:
    return MessageCrypto(token, encoding_aes_key, app_id)


def new_nonce() -> str:
    """A fresh nonce per attempt, digits like WeChat's (a receiver may refuse a repeat)."""
    return str(1_000_000_000 + secrets.randbelow(9_000_000_000))


class CallbackPusher:
    """Runs in the simulator's event loop between app start-up and clean-up."""

    def __init__(self, outbox: CallbackOutbox, app_id: Callable[[], str]) -> None:
        self.outbox = outbox
        self._app_id = app_id
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # ---- lifecycle (aiohttp app signals) -------------------------------------------------------

    async def start(self, _app: object = None) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        self.outbox.wake = self._wake.set
        self.outbox.on_reset = self._cancel_attempts
        self._scheduler = asyncio.create_task(self._schedule(), name="callback-pusher")

    async def stop(self, _app: object = None) -> None:
        self.outbox.wake = _ignore
        self.outbox.on_reset = _ignore
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        self._cancel_attempts()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _cancel_attempts(self) -> None:
        for task in self._tasks:
            task.cancel()

    # ---- the queue ----------------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Start due pushes while slots are free; sleep until the next is due or a wake-up."""
        outbox = self.outbox
        while True:
            self._wake.clear()
            timeout: float | None = None
            if outbox.in_flight < outbox.config.max_concurrency:
                push = outbox.pop_due(time.monotonic())
                if push is not None:
                    self._launch(push)
                    continue
                due = outbox.next_due()
                timeout = None if due is None else max(due - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _launch(self, push: Push) -> None:
        self.outbox.in_flight += 1
        task = asyncio.create_task(self._queued_attempt(push))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _queued_attempt(self, push: Push) -> None:
        outbox = self.outbox
        try:
            if not outbox.enabled:
                outbox.drop(push)
                return
            delivered = await self.attempt(push)
        finally:
            outbox.in_flight -= 1
            self._wake.set()
        if push.generation != outbox.generation:
            return
        if delivered or push.attempts >= outbox.config.max_attempts:
            outbox.finish(push, delivered=delivered)
        else:
            outbox.schedule(push, outbox.config.retry_delay_seconds)

    # ---- follower actions: pushed inline, the admin request waits for the outcome ---------------

    async def push_now(self, push: Push) -> None:
        """Every attempt of one push, retried in place; the outcome lands on `push`."""
        outbox = self.outbox
        outbox.in_flight += 1
        try:
            while outbox.enabled and push.generation == outbox.generation:
                if await self.attempt(push):
                    outbox.finish(push, delivered=True)
                    return
                if push.attempts >= outbox.config.max_attempts:
                    outbox.finish(push, delivered=False)
                    return
                await asyncio.sleep(outbox.config.retry_delay_seconds)
        finally:
            outbox.in_flight -= 1
            self._wake.set()

    # ---- one attempt ----------------------------------------------------------------------------

    async def attempt(self, push: Push) -> bool:
        """Sign and POST once; True when the receiver answered HTTP 200 within the timeout."""
        outbox = self.outbox
        config = outbox.config
        url, token_secret = config.callback_url, config.callback_token
        if url is None or token_secret is None or self._session is None:
            return False
        plaintext = to_xml(outbox.fields(push))
        token = token_secret.get_secret_value()
        timestamp, nonce = str(int(outbox.now())), new_nonce()
        if config.encoding_aes_key is not None:
            crypto = _crypto(token, config.encoding_aes_key.get_secret_value(), self._app_id())
            body, query = crypto.encrypted_push(
                plaintext, timestamp, nonce, to_user=config.original_id, openid=push.openid
            )
        else:
            body, query = plaintext, signed_query(token, timestamp, nonce, openid=push.openid)
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(
                url,
                params=query,
                data=body,
                headers={"Content-Type": XML_CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=config.timeout_seconds),
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            error = f"no answer within {config.timeout_seconds:g} s"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__  # never the URL or the query: they may carry secrets
        return outbox.attempted(push, status, error)


def _ignore() -> None:
    return None
