"""The callback web app: WeChat's server-URL protocol, exactly, and nothing else.

Each POST is checked in an order that costs an attacker the most and us the least:
signature, then timestamp freshness, then the body size, then (for a new nonce only) the
XML and the decryption, then every field against its column. Every refusal answers with
its status before anything is queued. An accepted push is answered `success` only once its
row is committed (receiver/writer.py groups the waiting pushes into one transaction);
within WeChat's 5 s, or 503 so that WeChat retries it. A replay is refused by whichever
process it reaches: the push's (timestamp, nonce) key is claimed in `callback_nonces` in
the transaction that stores it (db/nonces.py); each process's own cache only spares the
work for replays it has already seen stored.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import Engine
from starlette.requests import ClientDisconnect

from db.callbacks import CallbackRecord, InvalidRecord, check_record
from db.nonces import replay_key
from receiver.config import ReceiverConfig
from receiver.replay import NonceCache, NonceRefused
from receiver.spikes import SpikeWatch, Tell
from receiver.writer import (
    BatchWriter,
    CommitTimeout,
    RecordRefused,
    Replayed,
    WriterClosed,
    WriterUnavailable,
)
from wechat.crypto import CallbackError, MessageCrypto, SignatureError, verify_signature
from wechat.events import CallbackMessage, encrypted_field, parse_message
from wechat.events import parse_xml as parse_xml_fields

log = logging.getLogger("wxpush.receiver")

CALLBACK_PATH = "/wechat/callback"


class Refused(Exception):
    """A request we answer with `status` and write nothing for."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _record(app_id: str, message: CallbackMessage) -> CallbackRecord:
    return CallbackRecord(
        app_id=app_id,
        dedupe_key=message.dedupe_key,
        openid=message.openid,
        kind=message.kind,
        occurred_at=message.created_at,
        msg_type=message.msg_type,
        event=message.event,
        interaction_kind=message.interaction_kind,
        msgid=message.msg_id,
        receipt_status=message.receipt_status,
    )


class CallbackHandler:
    """The checks and the decoding, apart from the web framework (unit-testable)."""

    def __init__(self, config: ReceiverConfig, *, clock: Any = time.time) -> None:
        self.config = config
        self.clock = clock
        self.nonces = NonceCache(
            config.timestamp_window_seconds,
            max_entries=config.nonce_cache_entries,
            max_nonce_length=config.max_nonce_length,
        )
        self._token = config.token.get_secret_value()
        self.crypto = (
            MessageCrypto(
                self._token,
                config.encoding_aes_key.get_secret_value(),
                config.app_id,
                previous_encoding_aes_key=(
                    config.previous_encoding_aes_key.get_secret_value()
                    if config.previous_encoding_aes_key
                    else None
                ),
            )
            if config.encoding_aes_key
            else None
        )

    def check_signed(self, query: dict[str, str]) -> None:
        """The plain signature over (token, timestamp, nonce) and the timestamp window."""
        given = query.get("signature", "")
        timestamp = query.get("timestamp", "")
        nonce = query.get("nonce", "")
        if not given or not timestamp or not nonce:
            raise Refused(403, "missing signature, timestamp or nonce")
        try:
            verify_signature(self._token, given, timestamp, nonce)
        except SignatureError:
            raise Refused(403, "bad signature") from None
        try:
            skew = abs(self.clock() - int(timestamp))
        except ValueError:
            raise Refused(403, "timestamp is not a number") from None
        if skew > self.config.timestamp_window_seconds:
            raise Refused(403, f"stale timestamp ({skew:.0f} s from now)")

    def check_new(self, query: dict[str, str]) -> str:
        """Refuse a signed request this process has seen stored (same timestamp and
        nonce); else the key its push is stored under, which the database checks against
        every process's (db/nonces.py)."""
        try:
            if self.nonces.seen(query["timestamp"], query["nonce"]):
                raise Refused(409, "replayed nonce")
        except NonceRefused as exc:
            raise Refused(400, str(exc)) from None
        return replay_key(self.config.app_id, query["timestamp"], query["nonce"])

    def stored(self, query: dict[str, str]) -> None:
        """Remember a request whose push is stored (by this process or another), so its
        replays here are refused before any work."""
        self.nonces.remember(query["timestamp"], query["nonce"])

    def decode(self, query: dict[str, str], body: bytes) -> CallbackMessage:
        """The push as a CallbackMessage: plaintext, or decrypted in safe mode."""
        try:
            if query.get("encrypt_type", "raw") == "aes":
                if self.crypto is None:
                    raise Refused(400, "safe-mode push but no EncodingAESKey configured")
                encrypted = encrypted_field(parse_xml_fields(body))
                plaintext = self.crypto.verify_and_decrypt(
                    query.get("msg_signature", ""), query["timestamp"], query["nonce"], encrypted
                )
                return parse_message(plaintext)
            return parse_message(body)
        except CallbackError as exc:  # XML, signature, decryption, appid: each knows its status
            raise Refused(exc.http_status, f"{type(exc).__name__}: {exc}") from None

    def record(self, message: CallbackMessage) -> CallbackRecord:
        """The push as the row it becomes, refused with 400 unless every field fits its
        column (db/callbacks.py) and CreateTime is not ahead of our clock by more than the
        timestamp window: a row PostgreSQL would refuse must never reach the writer, and a
        push from the future would hold a follower's 48-hour window open for as long."""
        ahead = message.create_time - self.clock()
        if ahead > self.config.timestamp_window_seconds:
            raise Refused(400, f"CreateTime is {ahead:.0f} s in the future")
        record = _record(self.config.app_id, message)
        try:
            check_record(record)
        except InvalidRecord as exc:
            raise Refused(400, f"callback field does not fit: {exc}") from None
        return record


def create_app(config: ReceiverConfig, engine: Engine, tell: Tell | None = None) -> FastAPI:
    """The FastAPI app for one account, writing to `engine`; `tell` hears of spikes of
    refused pushes and of receipts no message matches (receiver/spikes.py)."""
    handler = CallbackHandler(config)
    refusals = SpikeWatch("refused", tell)
    unmatched = SpikeWatch("unmatched", tell)
    writer = BatchWriter(
        engine,
        batch_size=config.batch_size,
        commit_timeout=config.commit_timeout_seconds,
        max_backlog=config.max_backlog,
        # Two windows: a replay older than that fails the timestamp check by itself.
        nonce_retention_seconds=2 * config.timestamp_window_seconds,
        on_unmatched=lambda n: unmatched.note("receipts still unmatched after a re-check", n),
    )

    def refuse(refused: Refused) -> Response:
        refusals.note(refused.reason)
        return _refusal(refused)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _freeze_start_up_objects()
        writer.start()
        try:
            yield
        finally:
            # Bounded, whatever the database does: every acknowledged callback is already
            # committed, and what is still queued was never acknowledged.
            await writer.close()
            log.info("Receiver stopped; %d callbacks written.", writer.stats.written)

    # No /openapi.json, /docs or /redoc: WeChat needs none of them, and they would tell
    # anyone who finds the URL what it takes.
    app = FastAPI(
        title="wxpush callback receiver",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={ClientDisconnect: _client_gone},
    )
    app.state.handler = handler
    app.state.writer = writer

    @app.get(CALLBACK_PATH)
    async def verify_url(request: Request) -> Response:
        """WeChat's URL check: answer `echostr` unchanged when the signature holds."""
        query = dict(request.query_params)
        try:
            handler.check_signed(query)
        except Refused as refused:
            return refuse(refused)
        return PlainTextResponse(query.get("echostr", ""))

    @app.post(CALLBACK_PATH)
    async def receive(request: Request) -> Response:
        query = dict(request.query_params)
        try:
            handler.check_signed(query)
            body = await _read_limited(request, config.max_body_bytes)
            key = handler.check_new(query)
            record = handler.record(handler.decode(query, body))
            await writer.commit(record, key)
        except Refused as refused:
            return refuse(refused)
        except Replayed:
            handler.stored(query)
            return refuse(Refused(409, "replayed nonce"))
        except RecordRefused:
            return refuse(Refused(400, "the database refuses this callback"))
        except WriterClosed:
            return PlainTextResponse("shutting down", status_code=503)
        except (WriterUnavailable, CommitTimeout) as exc:
            return PlainTextResponse(f"not stored: {exc}", status_code=503)
        handler.stored(query)
        return PlainTextResponse("success")

    @app.get("/health")
    async def health() -> JSONResponse:
        """503 and `unhealthy` while the database is unwritable; `last_error` is the
        driver's error class and code only, never its text (it carries SQL)."""
        stats = writer.stats
        down = writer.unwritable_for
        return JSONResponse(
            {
                "status": "ok" if down is None else "unhealthy",
                "unwritable_seconds": None if down is None else round(down, 1),
                "refusing_pushes": writer.refusing,
                "backlog": writer.backlog,
                "written": stats.written,
                "batches": stats.batches,
                "write_failures": stats.failures,
                "last_error": stats.last_error,
                "rejected": stats.rejected,
                "replays": stats.replays,
                "forgotten_nonces": stats.forgotten_nonces,
                "pid": os.getpid(),
                "late_matches": stats.late_matches,
                "refusal_spikes": refusals.spikes,
                "unmatched_spikes": unmatched.spikes,
                **stats.totals,
            },
            status_code=200 if down is None else 503,
        )

    return app


_frozen = False


def _freeze_start_up_objects() -> None:
    """Once per process: what is imported and built by now lives as long as the process,
    so keep it out of the collector's full passes. They otherwise walk ~200k objects,
    ~100 ms each, often enough to put the p99 at 130 ms once answers wait for commits.
    Collected first, so no garbage is frozen with it (Python's gc docs:
    https://docs.python.org/3/library/gc.html#gc.freeze)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise Refused(413, f"body over {limit} bytes")
    return bytes(body)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client left mid-body, or the server cut it off (receiver/server.py's body
    # deadline): nobody reads this answer, and it is no error of ours worth a traceback.
    return Response(status_code=400)


def _refusal(refused: Refused) -> Response:
    # Rate-limited per reason, the reason's words before any detail ("stale timestamp
    # (412 s from now)" counts as "stale timestamp"): see receiver/log_limit.py.
    reason = re.split(r"[(:]", refused.reason, maxsplit=1)[0].strip()
    log.warning(
        "Refused a callback (%d): %s",
        refused.status,
        refused.reason,
        extra={"ratelimit_key": f"refused {refused.status} {reason}"},
    )
    return PlainTextResponse(refused.reason, status_code=refused.status)
