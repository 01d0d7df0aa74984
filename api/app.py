"""The push API's web app (FastAPI): signed requests in, messages stored, then sent.

Per request, in this order (docs/api.md):

    raw body ─► api.signing.verify (401: nothing parsed, nothing written)
             ─► parse + field rules (422 naming the field: nothing written)
             ─► the account's block known (422 on `app`)
             ─► store.accept: the row and the nonce in one group-committed transaction
                (409: the nonce was used; 422: an idempotency key reused for another body)
             ─► dispatch (the campaign engine) ─► 200 with WeChat's answer once it is
                recorded, or 202 `queued` when `wait` runs out first

Nothing is answered 2xx before its row is committed; a final status is answered only once
it is recorded. `GET /health` is unsigned and carries counts only, never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, func, select
from starlette.types import Receive, Scope, Send

from api.dispatch import Dispatcher, answer_of
from api.models import BatchIn, MessageIn, MessageView, field_errors
from api.report import DayReport
from api.signing import NONCE_HEADER, Refusal, SigningKey, nonce_key, verify
from api.store import Store, StoreClosed, StoreUnavailable
from db.api_messages import Accepted, NewMessage, Result, StoredMessage, new_message_id
from db.api_messages import Request as StoreRequest
from db.models import api_messages
from sending.message import client_msg_id_for
from tasks.blocks import WeChatApp
from wechat.errors import ConfigError

__all__ = ["ApiConfig", "LeanRoutes", "create_app"]

log = logging.getLogger("wxpush.api")

KeyLoader = Callable[[], Awaitable[dict[str, SigningKey]]]
MAX_BODY_BYTES = 4 * 1024 * 1024
JSON = "application/json"
MESSAGES_PATH = "/v1/messages"


class ApiConfig(BaseModel):
    """The service's knobs (the CLI fills them from the settings)."""

    model_config = ConfigDict(frozen=True)

    wait_seconds: float = Field(10.0, ge=0, le=30, description="Default `wait`.")
    batch_max: int = Field(1000, ge=1, le=1000, description="Messages per batch request.")
    key_reload_seconds: float = Field(2.0, gt=0, description="How often keys are re-read.")
    commit_timeout_seconds: float = Field(10.0, gt=0)
    concurrency: int = Field(64, ge=1, description="Sends in flight per account and kind.")
    request_timeout_seconds: float = Field(10.0, gt=0, description="One WeChat call.")


@dataclass
class Counts:
    """What the service did since it started (for /health)."""

    accepted: int = 0
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class KeyRing:
    """The API keys, re-read every few seconds, so a revoke takes effect within that."""

    def __init__(self, load: KeyLoader) -> None:
        self._load = load
        self.keys: dict[str, SigningKey] = {}
        self.loaded_at: float | None = None
        self.last_error: str | None = None

    def get(self, key_id: str) -> SigningKey | None:
        return self.keys.get(key_id)

    async def reload(self) -> None:
        try:
            self.keys = await self._load()
        except Exception as exc:
            said = type(exc).__name__
            if self.last_error != said:
                log.warning("Could not read the API keys (%s); keeping the ones read before.", said)
            self.last_error = said
            return
        self.loaded_at = time.monotonic()
        self.last_error = None


def _error(status: int, reason: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status)


def _unprocessable(detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=422)


@dataclass(frozen=True, slots=True)
class Call:
    """What the /v1 routes use of a request: what the client signed, as sent, and `wait`."""

    method: str
    path: str  # the path and query exactly as sent
    headers: Mapping[str, str]
    body: bytes
    wait: str | None  # the query's `wait`, if given

    @property
    def nonce(self) -> str:
        return self.headers.get(NONCE_HEADER.lower(), "") or self.headers.get(NONCE_HEADER, "")


async def _call_of(request: Request) -> Call:
    return Call(
        request.method,
        _raw_path(request),
        request.headers,
        await request.body(),
        request.query_params.get("wait"),
    )


def _raw_path(request: Request) -> str:
    """The path and query exactly as the client sent them (what it signed)."""
    scope = request.scope
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope["path"]
    query = scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


def _wait(text: str | None, default: float) -> float | JSONResponse:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 30:
        return _unprocessable(
            [{"loc": ["query", "wait"], "msg": "must be 0 to 30 seconds", "type": "value_error"}]
        )
    return value


def _client_msg_id(caller: str, message: MessageIn, message_id: str) -> str | None:
    """Template messages only (WeChat dedupes those on it): from the caller's idempotency
    key when there is one, so a retry after a restart carries the same id; else the
    message's own id."""
    if message.kind != "template":
        return None
    if message.idempotency_key is not None:
        return client_msg_id_for(f"api:{caller}", message.idempotency_key)
    return client_msg_id_for("api", message_id)


def _new(key: SigningKey, message: MessageIn, now: datetime) -> NewMessage:
    message_id = new_message_id()
    payload: dict[str, Any] = {}
    if message.data:
        payload["data"] = message.data
    for name in ("url", "page", "text"):
        value = getattr(message, name)
        if value is not None:
            payload[name] = value
    if message.miniprogram is not None:
        payload["miniprogram"] = message.miniprogram.model_dump()
    return NewMessage(
        id=message_id,
        caller=key.caller,
        key_id=key.key_id,
        idempotency_key=message.idempotency_key,
        request_hash=message.hash(),
        app=message.app,
        kind=message.kind,
        openid=message.openid,
        template_id=message.template_id,
        payload=payload,
        client_msg_id=_client_msg_id(key.caller, message, message_id),
        created_at=now,
    )


def _conflict(loc: list[Any]) -> dict[str, Any]:
    return {
        "loc": loc,
        "msg": "this idempotency_key was used before with a different message",
        "type": "idempotency_conflict",
    }


class Service:
    """What the routes share: the keys, the store, the dispatcher, the counts."""

    def __init__(
        self,
        engine: Engine,
        config: ApiConfig,
        keys: KeyLoader,
        dispatcher: Callable[[Store], Dispatcher],
    ) -> None:
        self.engine = engine
        self.config = config
        self.keys = KeyRing(keys)
        self.store = Store(engine, commit_timeout=config.commit_timeout_seconds)
        self.dispatcher = dispatcher(self.store)
        self.counts = Counts()
        self.queue_depth: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.keys.reload()
        if self.keys.loaded_at is None:
            raise RuntimeError(f"could not read the API keys ({self.keys.last_error})")
        self.store.start()
        await self.dispatcher.start()
        self._tasks.append(asyncio.create_task(self._every_few_seconds(), name="api-keys"))
        # The day's counts in the Prefect UI (Artifacts ▸ wxpush-push-api), every minute.
        report = DayReport(self.engine, self.counts.refused, self.dispatcher.started_at)
        self._tasks.append(asyncio.create_task(report.run(), name="api-report"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.dispatcher.close()
        await self.store.close()

    async def _every_few_seconds(self) -> None:
        """Keys (so a revoke counts within seconds), the queue depth for /health, and the
        request nonces older than two signing windows."""
        while True:
            await asyncio.sleep(self.config.key_reload_seconds)
            await self.keys.reload()
            with contextlib.suppress(Exception):
                self.queue_depth = await self.store.read(_queued)
            with contextlib.suppress(Exception):  # the next turn tries again
                await self.store.forget_replay_keys()

    # -- the steps every /v1 request takes ----------------------------------------------------

    def refuse(self, refusal: Refusal) -> JSONResponse:
        self.counts.refused[refusal.reason] += 1
        return _error(refusal.status, refusal.reason, refusal.detail)

    def signed(self, call: Call) -> tuple[SigningKey, bytes] | JSONResponse:
        body = call.body
        if len(body) > MAX_BODY_BYTES:
            self.counts.refused["too-large"] += 1
            return _error(413, "too-large", f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            key = verify(call.headers, call.method, call.path, body, self.keys.get)
        except Refusal as refusal:
            return self.refuse(refusal)
        return key, body

    async def known_app(self, app: str, loc: list[Any]) -> WeChatApp | JSONResponse:
        try:
            lane = await self.dispatcher.lane(app)
        except ConfigError as exc:
            self.counts.refused["invalid"] += 1
            msg = (str(exc).splitlines() or ["no such wechat-app block"])[0]
            return _unprocessable([{"loc": loc, "msg": msg, "type": "unknown_app"}])
        except Exception as exc:  # the Prefect API did not answer: nothing was stored
            self.counts.refused["unavailable"] += 1
            return _error(
                503,
                "unavailable",
                f"could not read the wechat-app block {app!r} ({type(exc).__name__}); retry",
            )
        return lane.block

    async def accept(
        self, key: SigningKey, call: Call, messages: list[NewMessage]
    ) -> Accepted | JSONResponse:
        nonce = call.nonce
        try:
            accepted = await self.store.accept(StoreRequest(nonce_key(key.key_id, nonce), messages))
        except (StoreUnavailable, StoreClosed) as exc:
            self.counts.refused["unavailable"] += 1
            return _error(503, "unavailable", str(exc))
        if not isinstance(accepted, Accepted):
            return self.refuse(Refusal(409, "replayed-nonce"))
        return accepted

    def _start(self, row: StoredMessage, created: bool) -> dict[str, Any] | asyncio.Future[Result]:
        """An accepted message's answer now (final, or queued on a held track), else the
        future of its send."""
        if created:
            self.counts.accepted += 1
        else:
            self.counts.duplicates += 1
        if row.final:
            return answer_of(row)
        if self.dispatcher.held(row.app, row.kind) is not None:
            return {"id": row.id, "status": "queued"}
        return self.dispatcher.submit(row)

    async def settle(self, row: StoredMessage, created: bool, deadline: float) -> dict[str, Any]:
        """The answer for one accepted message: final if it gets one before `deadline`."""
        future = self._start(row, created)
        if isinstance(future, dict):
            return future
        left = deadline - time.monotonic()
        if left <= 0 and not future.done():
            return {"id": row.id, "status": "queued"}
        try:
            async with asyncio.timeout(max(0.0, left)):
                result = await asyncio.shield(future)
        except TimeoutError:
            return {"id": row.id, "status": "queued"}
        return answer_of(result)

    async def settle_many(
        self, rows: list[tuple[StoredMessage, bool]], deadline: float
    ) -> list[dict[str, Any]]:
        """`settle` for a batch's messages, with one wait for all of them (not a timeout
        and a shield per message): the answers in the rows' order."""
        answers: list[dict[str, Any]] = []
        waiting: dict[int, asyncio.Future[Result]] = {}
        for index, (row, created) in enumerate(rows):
            started = self._start(row, created)
            if isinstance(started, dict):
                answers.append(started)
            else:
                answers.append({"id": row.id, "status": "queued"})
                waiting[index] = started
        pending = [future for future in waiting.values() if not future.done()]
        left = deadline - time.monotonic()
        if pending and left > 0:
            await asyncio.wait(pending, timeout=left)  # never cancels the sends
        for index, future in waiting.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                answers[index] = answer_of(future.result())
        return answers


def _queued(connection: Any) -> int:
    """Messages waiting to be sent (the index on (status, created_at) counts them)."""
    query = select(func.count()).select_from(api_messages).where(api_messages.c.status == "queued")
    return int(connection.execute(query).scalar_one())


async def one_message(service: Service, call: Call) -> Response:
    """POST /v1/messages: one signed message, answered once final or when `wait` runs out."""
    signed = service.signed(call)
    if isinstance(signed, JSONResponse):
        return signed
    key, body = signed
    try:
        message = MessageIn.model_validate_json(body)
    except ValidationError as exc:
        service.counts.refused["invalid"] += 1
        return _unprocessable(field_errors(exc))
    wait = _wait(call.wait, service.config.wait_seconds)
    if isinstance(wait, JSONResponse):
        return wait
    deadline = time.monotonic() + wait
    block = await service.known_app(message.app, ["body", "app"])
    if isinstance(block, JSONResponse):
        return block
    new = _new(key, message, datetime.now(UTC))
    accepted = await service.accept(key, call, [new])
    if isinstance(accepted, JSONResponse):
        return accepted
    row, created = accepted.messages[0]
    if not created and row.request_hash != new.request_hash:
        service.counts.refused["idempotency-conflict"] += 1
        return _unprocessable([_conflict(["body", "idempotency_key"])])
    answer = await service.settle(row, created, deadline)
    return JSONResponse(answer, status_code=202 if answer["status"] == "queued" else 200)


class LeanRoutes:
    """The ASGI app `wxpush api` serves: POST /v1/messages, the hot path, goes straight to
    `one_message`; everything else (and the lifespan) through the FastAPI app. FastAPI's
    layers (middleware, dependency solving, query parsing) cost about a fifth of the API's
    CPU per single message."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.service: Service = app.state.service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != MESSAGES_PATH
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = scope.get("raw_path") or scope["path"].encode("latin-1")
        query = scope.get("query_string") or b""
        path = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        wait = None
        if query:
            found = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
            wait = found.get("wait")
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        call = Call(scope["method"], path, headers, b"".join(chunks), wait)
        try:
            response = await one_message(self.service, call)
        except Exception:
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        await response(scope, receive, send)


def create_app(
    engine: Engine,
    *,
    config: ApiConfig | None = None,
    keys: KeyLoader,
    dispatcher: Callable[[Store], Dispatcher],
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The API's app. `keys` reads every API key (tasks.api_keys.load_keys); `dispatcher`
    makes the sender over the store (api/server.py wires the Prefect-backed one);
    `on_close` runs after the service stopped."""
    service = Service(engine, config or ApiConfig(), keys, dispatcher)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()
            if on_close is not None:
                await on_close()

    app = FastAPI(
        title="wxpush push API",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service

    @app.post(MESSAGES_PATH)
    async def send_one(request: Request) -> Response:
        return await one_message(service, await _call_of(request))

    @app.post("/v1/messages/batch")
    async def send_batch(request: Request) -> Response:
        call = await _call_of(request)
        signed = service.signed(call)
        if isinstance(signed, JSONResponse):
            return signed
        key, body = signed
        try:
            batch = BatchIn.model_validate_json(body)
        except ValidationError as exc:
            service.counts.refused["invalid"] += 1
            return _unprocessable(field_errors(exc))
        if len(batch.messages) > service.config.batch_max:
            service.counts.refused["invalid"] += 1
            return _unprocessable(
                [
                    {
                        "loc": ["body", "messages"],
                        "msg": f"at most {service.config.batch_max} messages per batch",
                        "type": "too_long",
                    }
                ]
            )
        wait = _wait(call.wait, service.config.wait_seconds)
        if isinstance(wait, JSONResponse):
            return wait
        deadline = time.monotonic() + wait
        for app_name in sorted({m.app for m in batch.messages}):
            index = next(i for i, m in enumerate(batch.messages) if m.app == app_name)
            block = await service.known_app(app_name, ["body", "messages", index, "app"])
            if isinstance(block, JSONResponse):
                return block
        now = datetime.now(UTC)
        news = [_new(key, message, now) for message in batch.messages]
        accepted = await service.accept(key, call, news)
        if isinstance(accepted, JSONResponse):
            return accepted
        rejected: dict[int, dict[str, Any]] = {}
        settled: list[tuple[StoredMessage, bool]] = []
        for index, ((row, created), new) in enumerate(zip(accepted.messages, news, strict=True)):
            if not created and row.request_hash != new.request_hash:
                service.counts.refused["idempotency-conflict"] += 1
                rejected[index] = _rejected(index, row.id)
            else:
                settled.append((row, created))
        answers = iter(await service.settle_many(settled, deadline))
        results = [
            rejected[index] if index in rejected else next(answers)
            for index in range(len(accepted.messages))
        ]
        queued = any(result["status"] == "queued" for result in results)
        return JSONResponse({"results": results}, status_code=202 if queued else 200)

    @app.get("/v1/messages/{message_id}")
    async def read_one(message_id: str, request: Request) -> Response:
        call = await _call_of(request)
        signed = service.signed(call)
        if isinstance(signed, JSONResponse):
            return signed
        key, _ = signed
        try:
            fresh = await service.store.claim_nonce(nonce_key(key.key_id, call.nonce))
        except (StoreUnavailable, StoreClosed) as exc:
            return _error(503, "unavailable", str(exc))
        if not fresh:
            return service.refuse(Refusal(409, "replayed-nonce"))
        row = await service.store.get(message_id) if len(message_id) <= 26 else None
        if row is None or row.caller != key.caller:
            return _error(404, "not-found", "no message of this caller has this id")
        return JSONResponse(_view(row).model_dump(exclude_none=True))

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse(_health(service), status_code=200 if service.store.healthy else 503)

    return app


def _rejected(index: int, message_id: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "status": "rejected",
        "reason": f"messages.{index}.idempotency_key was used before with a different message",
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _view(row: StoredMessage) -> MessageView:
    return MessageView(
        **answer_of(row),
        app=row.app,
        kind=row.kind,
        openid=row.openid,
        client_msg_id=row.client_msg_id,
        attempts=row.attempts,
        created_at=_iso(row.created_at),
        sent_at=_iso(row.sent_at),
        receipt_status=row.receipt_status,
        receipt_at=_iso(row.receipt_at),
    )


def _health(service: Service) -> dict[str, Any]:
    dispatched = service.dispatcher.counts
    store = service.store
    return {
        "status": "ok" if store.healthy else "database failing",
        "since": service.dispatcher.started_at.isoformat(),
        "accepted": service.counts.accepted,
        "duplicates": service.counts.duplicates,
        "sent": dispatched.sent,
        "failed": dict(dispatched.failed),
        "unknown": dispatched.unknown,
        "refused": dict(service.counts.refused),
        "queue_depth": service.queue_depth,
        "in_flight": service.dispatcher.in_flight,
        "holds": dict(dispatched.holds),
        "lanes": service.dispatcher.snapshot(),
        "keys": len(service.keys.keys),
        "keys_error": service.keys.last_error,
        "store": {
            "backlog": store.backlog,
            "transactions": store.transactions,
            "last_error": store.last_error,
        },
    }
