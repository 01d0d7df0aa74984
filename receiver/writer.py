"""Group commit: a push is acknowledged only once its row is committed, and one transaction
serves every push that arrived while the previous one was being written.

`put` queues a record and returns a future; one task drains the queue into one transaction
per batch (up to `batch_size`) and settles the futures when it commits. The request path
awaits its future for at most the commit timeout (WeChat waits 5 s, then retries), so
`success` always means stored, and a `kill -9` loses nothing that was acknowledged.

What goes wrong is sorted by whose fault it is:
- **the record** (DataError, IntegrityError, ValueError …): the batch is split in halves
  until the bad record stands alone; it is dropped with a log line and its request answers
  400. The others are written. Never retried: it would fail the same way for ever.
- **the database** (OperationalError, a refused connection, a missing table, a statement
  stuck behind a lock): the batch is kept and retried with backoff. Meanwhile the writer is
  unhealthy (/health answers 503), and once that has lasted one commit timeout new pushes
  are refused at once with 503, so WeChat retries them later; so is a push that finds the
  backlog full. A record whose request already got 503 is still written when the database
  returns: the dedupe key makes WeChat's retry of it a no-op.

**Replays** (docs/receiver.md, "Several processes"): a push queued with its replay key
(db/nonces.py) claims that key in the transaction that stores it. A key that was claimed
before, by any receiver process, or earlier in the same batch, fails that push with
`Replayed` (answer 409) and stores nothing; a transaction that fails claims nothing, so a
push whose write failed can still be received. Each writer also deletes keys older than
`nonce_retention_seconds`, a bounded chunk at a time, between batches.

`close()` is bounded: it writes what it can within `CLOSE_TIMEOUT_SECONDS` and fails the
rest (never acknowledged). Transactions run in one daemon thread (db/thread.py), not
asyncio's thread pool, whose threads the interpreter joins at exit: a statement stuck on a
dead database must not keep the process alive after SIGTERM.

A receipt can arrive before the campaign has written its msgid. The send path matches
stored receipts when it writes; for the race where both transactions commit at the same
moment, the writer checks each receipt it stored unmatched once more, a few seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from db.callbacks import (
    RECEIPT,
    CallbackCounts,
    CallbackRecord,
    apply_callbacks,
    match_pending_receipts,
)
from db.errors import about_the_data, describe
from db.nonces import claim, forget_before
from db.thread import DatabaseThread
from db.types import utcnow

log = logging.getLogger("wxpush.receiver")

RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
RECHECK_AFTER_SECONDS = 3.0
# Re-checks run between batches, so each is kept short: a few hundred msgids at most, a
# tenth of a second apart (up to ~2,000 a second), so pushes waiting for their commit are
# never stuck behind one long sweep.
SWEEP_EVERY_SECONDS = 0.1
SWEEP_CHUNK = 200
IDLE_WAKE_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 3.0
# Old replay keys go between batches, at most PRUNE_CHUNK at a time (a few ms), once a
# second, or at once again while a full chunk went: up to ~50,000 keys a second if need be.
PRUNE_EVERY_SECONDS = 1.0
PRUNE_CHUNK = 5_000
DEFAULT_COMMIT_TIMEOUT = 4.0
DEFAULT_MAX_BACKLOG = 10_000


@dataclass
class WriterStats:
    """What the writer has done so far (the /health answer and the bench read it)."""

    written: int = 0
    batches: int = 0
    failures: int = 0
    rejected: int = 0
    replays: int = 0
    forgotten_nonces: int = 0
    late_matches: int = 0
    last_error: str | None = None
    totals: dict[str, int] = field(default_factory=dict)


class WriterClosed(RuntimeError):
    """The receiver is shutting down and takes no new callbacks (answer 503)."""


class WriterUnavailable(RuntimeError):
    """The database has been unwritable for too long, or the backlog is full (answer 503)."""


class CommitTimeout(RuntimeError):
    """The push was not committed within the commit timeout (answer 503; it stays queued)."""


class RecordRefused(ValueError):
    """The database refused this record as invalid: dropped, never retried (answer 400)."""


class Replayed(ValueError):
    """This signed request was stored before, by this process or another: a replay
    (answer 409; nothing written)."""


@dataclass(slots=True)
class _Pending:
    record: CallbackRecord
    future: asyncio.Future[None]
    since: float
    replay_key: str | None = None


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen: a request that timed out no longer awaits it."""
    if not future.cancelled():
        future.exception()


class BatchWriter:
    """Records in, one transaction per batch, each record's future settled on commit."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = 500,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        nonce_retention_seconds: float | None = None,
        apply: Callable[..., CallbackCounts] = apply_callbacks,
        on_unmatched: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        #: Told how many receipts a late re-check still could not match (receiver/spikes.py).
        self.on_unmatched = on_unmatched
        self.batch_size = batch_size
        self.commit_timeout = commit_timeout
        self.max_backlog = max_backlog
        self.nonce_retention_seconds = nonce_retention_seconds  # None: keep every key
        self._apply = apply
        self._queue: deque[_Pending] = deque()
        self._current: list[_Pending] = []  # the batch being written
        self._wake = asyncio.Event()
        self._db = DatabaseThread("callback-writer-db")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down_since: float | None = None  # the first failure of the current outage
        self._unmatched: dict[int, float] = {}  # msgid → when first stored unmatched
        self._last_sweep = 0.0
        self._last_prune = 0.0
        self.stats = WriterStats()

    def start(self) -> None:
        """Begin draining (call from the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="callback-writer")

    # -- the request side ------------------------------------------------------------------------

    def put(self, record: CallbackRecord, replay_key: str | None = None) -> asyncio.Future[None]:
        """Queue one record; the future resolves when it is committed, or fails with
        RecordRefused / Replayed / WriterClosed. With `replay_key`, the record is stored only
        if that key is claimed in the same transaction. Raises WriterClosed or
        WriterUnavailable instead of queueing when the receiver should answer 503 at once."""
        if self._closing:
            raise WriterClosed("the receiver is shutting down")
        if self.refusing:
            raise WriterUnavailable("the database has been unwritable for too long")
        if self.backlog >= self.max_backlog:
            raise WriterUnavailable(f"{self.backlog} callbacks are waiting to be written")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append(_Pending(record, future, time.monotonic(), replay_key))
        self._wake.set()
        return future

    async def commit(
        self, record: CallbackRecord, replay_key: str | None = None, timeout: float | None = None
    ) -> None:
        """Queue `record` and return once it is committed. Raises CommitTimeout after
        `timeout` (default: the writer's commit timeout); the record stays queued."""
        future = self.put(record, replay_key)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout or self.commit_timeout)
        except TimeoutError:
            raise CommitTimeout("not committed in time") from None

    @property
    def backlog(self) -> int:
        """Records queued or being written: not yet committed."""
        return len(self._queue) + len(self._current)

    @property
    def unwritable_for(self) -> float | None:
        """Seconds the database has been failing, or stuck on the oldest waiting record for
        longer than the commit timeout; None while it writes."""
        now = time.monotonic()
        if self._down_since is not None:
            return now - self._down_since
        waiting = self._current or self._queue
        if waiting and now - waiting[0].since > self.commit_timeout:
            return now - waiting[0].since
        return None

    @property
    def healthy(self) -> bool:
        """False while the database is unwritable (/health answers 503)."""
        return self.unwritable_for is None

    @property
    def refusing(self) -> bool:
        """True once the database has been unwritable for a commit timeout: new pushes get
        503 at once instead of waiting for a commit that will not come."""
        down = self.unwritable_for
        return down is not None and down >= self.commit_timeout

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stop taking records, write what can be written within `timeout`, and fail the
        rest with WriterClosed (their requests were never answered `success`)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._db.stop()
        left = [*self._current, *self._queue]
        self._current, self._queue = [], deque()
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(WriterClosed("not written before shutdown"))
        if left:
            log.error(
                "Stopped with %d callbacks unwritten (%s); none was acknowledged, so WeChat "
                "retries them.",
                len(left),
                self.stats.last_error or "the database did not answer in time",
            )

    # -- the writer task -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_WAKE_SECONDS)
            if self._queue:
                count = min(len(self._queue), self.batch_size)
                self._current = [self._queue.popleft() for _ in range(count)]
                await self._write()
                self._current = []
            if self._unmatched and time.monotonic() - self._last_sweep >= SWEEP_EVERY_SECONDS:
                await self._sweep()
            if (
                self.nonce_retention_seconds is not None
                and time.monotonic() - self._last_prune >= PRUNE_EVERY_SECONDS
            ):
                await self._prune()

    async def _write(self) -> None:
        """Commit `self._current`: split around bad records, retry the database."""
        parts = [self._current]
        attempt = 0
        while parts:
            part = parts[0]
            try:
                counts, replayed = await self._db.run(self._transaction, part)
            except Exception as exc:
                if about_the_data(exc):
                    self._down_since = None  # it judged the data: the database is there
                    parts.pop(0)
                    if len(part) == 1:
                        self._drop(part[0], exc)
                    else:
                        middle = len(part) // 2
                        parts[:0] = [part[:middle], part[middle:]]
                    continue
                await self._failed(len(part), exc, attempt)
                attempt += 1
                continue
            parts.pop(0)
            self._committed(part, counts, replayed)

    async def _failed(self, size: int, exc: Exception, attempt: int) -> None:
        self.stats.failures += 1
        self.stats.last_error = describe(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        log.error(
            "Writing %d callbacks failed (%s); retrying in %.1f s.",
            size,
            self.stats.last_error,
            delay,
        )
        await asyncio.sleep(delay)

    def _drop(self, pending: _Pending, exc: Exception) -> None:
        self.stats.rejected += 1
        record = pending.record
        log.error(
            "Dropped a callback the database refuses (%s): kind %s, key %r.",
            describe(exc),
            record.kind,
            str(record.dedupe_key)[:80],
        )
        if not pending.future.done():
            pending.future.set_exception(RecordRefused("the database refuses this callback"))

    def _committed(
        self, part: Sequence[_Pending], counts: CallbackCounts, replayed: set[int]
    ) -> None:
        self._down_since = None
        self.stats.written += len(part) - len(replayed)
        self.stats.replays += len(replayed)
        self.stats.batches += 1
        for key, value in asdict(counts).items():
            self.stats.totals[key] = self.stats.totals.get(key, 0) + value
        if counts.receipts_unmatched:
            now = time.monotonic()
            for n, pending in enumerate(part):
                record = pending.record
                if record.kind == RECEIPT and record.msgid is not None and n not in replayed:
                    self._unmatched.setdefault(record.msgid, now)
        for n, pending in enumerate(part):
            if pending.future.done():
                continue
            if n in replayed:
                pending.future.set_exception(Replayed("replayed nonce"))
            else:
                pending.future.set_result(None)

    async def _sweep(self) -> None:
        """Re-check, once, the unmatched receipts stored more than a few seconds ago (the
        oldest first: the dict keeps the order they were stored in)."""
        self._last_sweep = time.monotonic()
        due = self._last_sweep - RECHECK_AFTER_SECONDS
        msgids: list[int] = []
        for msgid, since in self._unmatched.items():
            if since > due or len(msgids) == SWEEP_CHUNK:
                break
            msgids.append(msgid)
        if not msgids:
            return
        try:
            matched = await self._db.run(self._match, msgids)
        except Exception as exc:  # kept: the next sweep tries again
            log.warning("Matching late receipts failed: %s", describe(exc))
            return
        self.stats.late_matches += matched
        for msgid in msgids:
            del self._unmatched[msgid]
        if self.on_unmatched is not None:
            self.on_unmatched(len(msgids) - matched)

    async def _prune(self) -> None:
        """Delete one chunk of replay keys older than the retention; the next chunk comes
        at once if this one was full, else after PRUNE_EVERY_SECONDS."""
        self._last_prune = time.monotonic()
        assert self.nonce_retention_seconds is not None
        cutoff = utcnow() - timedelta(seconds=self.nonce_retention_seconds)
        try:
            gone = await self._db.run(self._forget, cutoff)
        except Exception as exc:  # the next round tries again
            log.warning("Deleting old replay keys failed: %s", describe(exc))
            return
        self.stats.forgotten_nonces += gone
        if gone >= PRUNE_CHUNK:
            self._last_prune = 0.0

    def _transaction(self, part: Sequence[_Pending]) -> tuple[CallbackCounts, set[int]]:
        """Claim the part's replay keys and store the pushes whose key was new; returns the
        counts and the positions in `part` of the replays (stored nothing)."""
        with self.engine.begin() as connection:
            keys = [p.replay_key for p in part if p.replay_key is not None]
            claimed = claim(connection, keys) if keys else set()
            fresh: list[CallbackRecord] = []
            replayed: set[int] = set()
            for n, pending in enumerate(part):
                key = pending.replay_key
                if key is None:
                    fresh.append(pending.record)
                elif key in claimed:
                    claimed.discard(key)  # a second copy in this batch is a replay
                    fresh.append(pending.record)
                else:
                    replayed.add(n)
            return self._apply(connection, fresh), replayed

    def _forget(self, cutoff: datetime) -> int:
        with self.engine.begin() as connection:
            return forget_before(connection, cutoff, PRUNE_CHUNK)

    def _match(self, msgids: list[int]) -> int:
        with self.engine.begin() as connection:
            return match_pending_receipts(connection, msgids)
