"""Write callbacks in bulk after they were acknowledged: WeChat gives 5 s per push and
sends bursts (a campaign's receipts), so the request path only enqueues; one task drains
the queue into one transaction per batch.

Nothing queued is lost on a graceful shutdown: `close()` stops taking new records and
writes every queued one. A database that is down is retried with backoff, the batch kept.

A receipt can arrive before the campaign has written its msgid (a batch is recorded after
its last answer). The send path matches stored receipts when it writes; for the race where
both transactions commit at the same moment (neither sees the other), the writer checks
each receipt it stored unmatched once more, a few seconds later, when the campaign's
transaction has surely committed. Receipts for msgids no campaign of ours sent stay
unmatched, at the cost of one index lookup each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine

from db.callbacks import (
    RECEIPT,
    CallbackCounts,
    CallbackRecord,
    apply_callbacks,
    match_pending_receipts,
)

log = logging.getLogger("wxpush.receiver")

RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
RECHECK_AFTER_SECONDS = 3.0
SWEEP_EVERY_SECONDS = 1.0


@dataclass
class WriterStats:
    """What the writer has done so far (the /health answer and the bench read it)."""

    queued: int = 0
    written: int = 0
    batches: int = 0
    duplicates: int = 0
    failures: int = 0
    rejected: int = 0
    late_matches: int = 0
    last_error: str | None = None
    totals: dict[str, int] = field(default_factory=dict)


class WriterClosed(RuntimeError):
    """The receiver is shutting down and takes no new callbacks."""


class BatchWriter:
    """An asyncio queue drained into `apply_callbacks`, one transaction per batch."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        apply: Callable[..., CallbackCounts] = apply_callbacks,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._apply = apply
        # None is the wake-up call of close(): a writer waiting out a long flush interval
        # must not make shutdown wait for it.
        self._queue: asyncio.Queue[CallbackRecord | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._unmatched: dict[int, float] = {}  # msgid → when first stored unmatched
        self._last_sweep = 0.0
        self.stats = WriterStats()

    def start(self) -> None:
        """Begin draining (call from the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="callback-writer")

    def put(self, record: CallbackRecord) -> None:
        """Queue one callback; raises WriterClosed during shutdown (the caller answers 503,
        so WeChat retries it against the next process)."""
        if self._closing:
            raise WriterClosed("the receiver is shutting down")
        self._queue.put_nowait(record)
        self.stats.queued += 1

    @property
    def backlog(self) -> int:
        """Callbacks acknowledged but not yet written (queued or in the batch being built)."""
        return self.stats.queued - self.stats.written

    async def close(self) -> None:
        """Stop taking callbacks and write every queued one before returning."""
        self._closing = True
        self._queue.put_nowait(None)
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._write(batch)
            if self._unmatched and time.monotonic() - self._last_sweep >= SWEEP_EVERY_SECONDS:
                await self._sweep()
            if not batch and self._closing and self._queue.empty():
                return

    async def _next_batch(self) -> list[CallbackRecord]:
        batch: list[CallbackRecord] = []
        deadline = time.monotonic() + self.flush_interval
        while len(batch) < self.batch_size:
            if not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    batch.append(item)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or self._closing:
                break
            with contextlib.suppress(TimeoutError):
                item = await asyncio.wait_for(self._queue.get(), timeout=left)
                if item is not None:
                    batch.append(item)
        return batch

    async def _write(self, batch: Sequence[CallbackRecord]) -> None:
        attempt = 0
        while True:
            try:
                counts = await asyncio.to_thread(self._transaction, batch)
            except ValueError:
                # A record the ledger refuses (a receiver bug, not an outage): write the
                # others one by one rather than retrying the batch for ever.
                await self._write_one_by_one(batch)
                return
            except Exception as exc:  # the database is down or refused: keep the batch
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.error(
                    "Writing %d callbacks failed (%s); retrying in %.1f s, nothing is dropped.",
                    len(batch),
                    self.stats.last_error,
                    delay,
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self._count(batch, counts)
            return

    def _count(self, batch: Sequence[CallbackRecord], counts: CallbackCounts) -> None:
        self.stats.written += len(batch)
        self.stats.batches += 1
        for key, value in asdict(counts).items():
            self.stats.totals[key] = self.stats.totals.get(key, 0) + value
        if counts.receipts_unmatched:
            now = time.monotonic()
            for record in batch:
                if record.kind == RECEIPT and record.msgid is not None:
                    self._unmatched.setdefault(record.msgid, now)

    async def _write_one_by_one(self, batch: Sequence[CallbackRecord]) -> None:
        for record in batch:
            try:
                counts = await asyncio.to_thread(self._transaction, [record])
            except ValueError as exc:
                self.stats.rejected += 1
                self.stats.written += 1  # handled: it will never be written
                log.error("A callback the ledger refuses was dropped: %s", exc)
                continue
            self._count([record], counts)

    async def _sweep(self) -> None:
        """Re-check, once, the unmatched receipts stored more than a few seconds ago."""
        self._last_sweep = time.monotonic()
        due = self._last_sweep - RECHECK_AFTER_SECONDS
        msgids = [m for m, since in self._unmatched.items() if since <= due]
        if not msgids:
            return
        try:
            self.stats.late_matches += await asyncio.to_thread(self._match, msgids)
        except Exception as exc:  # kept: the next sweep tries again
            log.warning("Matching late receipts failed: %s", type(exc).__name__)
            return
        for msgid in msgids:
            del self._unmatched[msgid]

    def _transaction(self, batch: Sequence[CallbackRecord]) -> CallbackCounts:
        with self.engine.begin() as connection:
            return self._apply(connection, batch)

    def _match(self, msgids: list[int]) -> int:
        with self.engine.begin() as connection:
            return match_pending_receipts(connection, msgids)
