"""The API's writes, group-committed: many requests per transaction, each answered only
once its transaction has committed.

`accept` (a request's messages and its nonce), `claim_nonce` (a signed GET) and `record`
(WeChat's answers) queue a job and await its future; one daemon database thread drains the
queue into one transaction per batch (db/api_messages.py does the SQL), taking the next
batch as soon as a transaction commits, and hands the answers back to the event loop once
it has committed. So a 2xx always means committed, and a `kill -9` loses nothing that was
answered.

What goes wrong is sorted as the receiver's writer sorts it:
- a job the database refuses as data (IntegrityError, DataError, ValueError …): the batch
  is split until the bad job stands alone; that job fails (its request answers 500), the
  others are written;
- the database itself (unreachable, locked, a missing table): the batch is retried with
  back-off; a request's job still unwritten `commit_timeout` after it was queued fails
  with `StoreUnavailable` (answer 503) when its next attempt would start, never while a
  transaction holding it is in flight, so nothing answered 503 is written later. WeChat's
  answers are kept and retried until they are written.
Reads (`get`, `unfinished`, counts) go through the engine's pool in asyncio's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine

from api.signing import WINDOW_SECONDS
from db import api_messages
from db.api_messages import Accepted, Replayed, Request, Result, StoredMessage
from db.errors import about_the_data, describe
from db.nonces import forget_before
from db.types import utcnow

__all__ = ["Store", "StoreClosed", "StoreUnavailable"]

log = logging.getLogger("wxpush.api")

T = TypeVar("T")
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)
DEFAULT_COMMIT_TIMEOUT = 10.0
DEFAULT_BATCH_JOBS = 500

JobKind = Literal["accept", "nonce", "record"]


class StoreUnavailable(RuntimeError):
    """The database could not be written in time (answer 503; nothing was written)."""


class StoreClosed(RuntimeError):
    """The API is shutting down (answer 503)."""


@dataclass(slots=True)
class _Job:
    kind: JobKind
    payload: Any
    future: asyncio.Future[Any]
    since: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        if self.kind == "accept":
            return max(1, len(self.payload.messages))
        if self.kind == "record":
            return max(1, len(self.payload))
        return 1


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Store:
    """The API's database: group-committed writes, pooled reads."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_rows: int = DEFAULT_BATCH_JOBS,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.batch_rows = batch_rows
        self.commit_timeout = commit_timeout
        self._queue: deque[_Job] = deque()  # appended by the loop, taken by the thread
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._gone = False
        self._down_since: float | None = None
        self.transactions = 0
        self.last_error: str | None = None

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name="api-store-db", daemon=True)
        self._thread.start()

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued within `timeout`; fail the rest with StoreClosed."""
        self._closing = True
        self._ready.set()
        thread = self._thread
        if thread is not None:
            deadline = time.monotonic() + timeout
            while thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        self._gone = True  # a thread still retrying stops at its next attempt
        self._ready.set()
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(StoreClosed("the API is shutting down"))

    @property
    def healthy(self) -> bool:
        """False while the database is failing (/health answers 503)."""
        return self._down_since is None

    @property
    def backlog(self) -> int:
        return len(self._queue)

    # -- writes ----------------------------------------------------------------------------

    def _put(self, kind: JobKind, payload: Any) -> asyncio.Future[Any]:
        if self._closing:
            raise StoreClosed("the API is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append(_Job(kind, payload, future))
        self._ready.set()
        return future

    async def accept(self, request: Request) -> Accepted | Replayed:
        """Store a request's messages (and claim its nonce) in the next transaction."""
        return await self._put("accept", request)  # type: ignore[no-any-return]

    async def claim_nonce(self, key: str) -> bool:
        """Claim a signed GET's nonce; False if it was used before (a replay)."""
        return await self._put("nonce", key)  # type: ignore[no-any-return]

    async def record(self, results: Sequence[Result]) -> None:
        """Store WeChat's answers; returns once committed."""
        if results:
            await self._put("record", list(results))

    async def forget_replay_keys(self, limit: int = 2_000) -> int:
        """Delete up to `limit` request nonces older than two signing windows (db/nonces.py:
        past them a replay is refused by its timestamp); how many went. Its own short
        transaction, outside the group commit: nothing waits on it."""
        cutoff = utcnow() - timedelta(seconds=2 * WINDOW_SECONDS)

        def run() -> int:
            with self.engine.begin() as connection:
                return forget_before(connection, cutoff, limit)

        return await asyncio.to_thread(run)

    # -- reads -----------------------------------------------------------------------------

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work` on a pooled connection, in a thread."""

        def run() -> T:
            with self.engine.connect() as connection:
                return work(connection)

        return await asyncio.to_thread(run)

    async def get(self, message_id: str) -> StoredMessage | None:
        return await self.read(lambda conn: api_messages.get(conn, message_id))

    async def unfinished(self, limit: int, before: datetime | None = None) -> list[StoredMessage]:
        return await self.read(lambda conn: api_messages.unfinished(conn, limit, before))

    # -- the writer thread -----------------------------------------------------------------
    # One daemon thread takes the queued jobs itself as soon as a transaction commits (no
    # trip through the event loop between two transactions) and hands the answers back to
    # the loop in one call per transaction. A daemon, so a statement stuck on a dead
    # database never keeps the process alive after SIGTERM.

    def _serve(self) -> None:
        while not self._gone:
            if not self._queue:
                if self._closing:
                    return
                self._ready.wait(1.0)
                self._ready.clear()
                continue
            batch: list[_Job] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].size <= self.batch_rows):
                job = self._queue.popleft()
                batch.append(job)
                rows += job.size
            self._write(batch)

    def _settle(self, outcomes: list[tuple[_Job, bool, Any]]) -> None:
        """On the loop: the futures of a written (or failed) part."""
        for job, ok, value in outcomes:
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _hand_back(self, outcomes: list[tuple[_Job, bool, Any]]) -> None:
        if not outcomes or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            self._loop.call_soon_threadsafe(self._settle, outcomes)

    def _write(self, batch: list[_Job]) -> None:
        parts = [batch]
        attempt = 0
        while parts and not self._gone:
            part = [job for job in parts[0] if not job.future.done()]
            part = self._expire(part)
            if not part:
                parts.pop(0)
                continue
            try:
                answers = self._transaction(part)
            except Exception as exc:
                if about_the_data(exc):
                    self._down_since = None
                    parts.pop(0)
                    if len(part) == 1:
                        log.error("The database refused an API write (%s).", describe(exc))
                        self._hand_back([(part[0], False, exc)])
                    else:
                        middle = len(part) // 2
                        parts[:0] = [part[:middle], part[middle:]]
                    continue
                parts[0] = part
                self.last_error = describe(exc)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.error(
                    "Writing %d API jobs failed (%s); retrying in %.2f s.",
                    len(part),
                    self.last_error,
                    delay,
                )
                attempt += 1
                time.sleep(delay)
                continue
            parts.pop(0)
            self._down_since = None
            self.transactions += 1
            done = zip(part, answers, strict=True)
            self._hand_back([(job, True, answer) for job, answer in done])
        # Given up at shutdown (between two attempts: nothing of it is in flight).
        closed = StoreClosed("the API is shutting down")
        self._hand_back([(job, False, closed) for part in parts for job in part])

    def _expire(self, part: list[_Job]) -> list[_Job]:
        """Fail the requests' jobs that waited longer than the commit timeout (none is in
        flight). WeChat's answers (`record`) never expire: they are written once the
        database is back, or the message would be sent again."""
        now = time.monotonic()
        kept = []
        expired: list[tuple[_Job, bool, Any]] = []
        for job in part:
            if job.kind != "record" and now - job.since > self.commit_timeout:
                refusal = StoreUnavailable(
                    f"the database could not be written for {self.commit_timeout:.0f} s"
                    f" ({self.last_error or 'no answer'})"
                )
                expired.append((job, False, refusal))
            else:
                kept.append(job)
        self._hand_back(expired)
        return kept

    def _transaction(self, part: Sequence[_Job]) -> list[Any]:
        """One transaction for every job of `part`; the answers in the jobs' order."""
        with self.engine.begin() as connection:
            accepts = [job.payload for job in part if job.kind == "accept"]
            accepted = iter(api_messages.accept(connection, accepts) if accepts else [])
            results = [r for job in part if job.kind == "record" for r in job.payload]
            answers: list[Any] = []
            for job in part:
                if job.kind == "accept":
                    answers.append(next(accepted))
                elif job.kind == "nonce":
                    answers.append(api_messages.claim_nonce_only(connection, job.payload))
                else:
                    answers.append(None)
            if results:
                api_messages.record(connection, results)
            return answers
