"""The receiver's HTTP server: uvicorn, with the bounds an internet-facing port needs.

What uvicorn 0.54 enforces by itself, read from its source and measured:
- the h11 protocol caps an unfinished request head (`h11_max_incomplete_event_size`,
  answered 400); httptools, uvicorn's default when installed, has no cap: 20 connections
  sending 32 MiB unfinished headers took the receiver from 129 to 895 MiB;
- its keep-alive timer runs only between requests: a connection that sends nothing, or a
  head or a body that never ends, is held for ever, so ~1,000 of them use up the file
  descriptors and a real push is turned away;
- `limit_concurrency` counts open connections too, so slow clients holding connections
  would turn every real push into a 503.

So the receiver runs on h11 with a head cap, and `GuardedH11Protocol` adds what is
missing: a deadline for the request head, another for the body, and a cap on open
connections that makes room by closing the connection that has waited longest without a
complete request (a real push sends its whole request at once, a slow client never does).

Several processes on one port (`wxpush receiver --processes N`) are uvicorn's own
multiprocess supervisor: the parent binds the socket, spawns N processes that accept from
it, restarts one that dies and stops them all on SIGTERM. Each process builds its own app,
database engine and protocol class from picklable factories (`AppFactory`,
`ProtocolFactory`); the replay memory they share is in the database (db/nonces.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from db.engine import make_engine
from receiver import log_limit
from receiver.app import create_app
from receiver.config import ReceiverConfig
from receiver.spikes import Tell

log = logging.getLogger("wxpush.receiver")

FD_RESERVE = 64  # descriptors for the database, logs and the listening socket
Phase = Literal["head", "body", "app", "idle"]
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_BUSY_ANSWER = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """h11 with a deadline on each request's head and body, and a connection cap.

    A connection is in one phase: `head` (waiting for, or reading, a request line and
    headers), `body`, `app` (the request is in; the app answers it) or `idle` (between
    requests, where uvicorn's keep-alive timer applies). All but `app` can be evicted.
    Subclassed per server by `guarded_protocol`, which sets the class attributes.
    """

    receiver_config: ClassVar[ReceiverConfig]
    live: ClassVar[set[GuardedH11Protocol]]  # open and not being closed by us
    waiting: ClassVar[dict[GuardedH11Protocol, None]]  # evictable, longest-waiting first

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.live.add(self)
        self._follow()
        while len(self.live) > self.receiver_config.max_connections:
            oldest = next((other for other in self.waiting if other is not self), None)
            if oldest is None:  # every other connection has a request in progress
                self._close(_BUSY_ANSWER, "Refused a connection: %d connections are busy")
                return
            oldest._close(_BUSY_ANSWER, "Closed the longest-waiting connection: cap %d reached")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._forget()

    def _follow(self) -> None:
        """Move to the phase h11's state says, arming that phase's deadline."""
        if self.transport.is_closing():
            self._forget()
            return
        state = self.conn.their_state
        phase: Phase
        if state is h11.IDLE:
            phase = "idle" if self.timeout_keep_alive_task is not None else "head"
        elif state is h11.SEND_BODY:
            phase = "body"
        else:
            phase = "app"
        if phase == self._phase:
            return
        previous, self._phase = self._phase, phase
        self._cancel_deadline()
        config = self.receiver_config
        if phase == "head":
            self._arm(config.header_timeout_seconds, "head")
        elif phase == "body":
            self._arm(config.body_timeout_seconds, "body")
        if phase == "app":
            self.waiting.pop(self, None)
        elif previous in (None, "app"):  # starts waiting now: to the back of the queue
            self.waiting[self] = None

    def _arm(self, seconds: float, part: str) -> None:
        self._deadline = self.loop.call_later(seconds, self._timed_out, seconds, part)

    def _timed_out(self, seconds: float, part: str) -> None:
        self._deadline = None
        if self.transport.is_closing():  # uvicorn closed it first (400, keep-alive)
            return
        self._close(
            _TIMEOUT_ANSWER,
            f"Closed a connection: request {part} not complete within %s s",
            seconds,
        )

    def _close(self, answer: bytes, message: str, arg: object = None) -> None:
        """Answer (unless an answer has begun) and close; one rate-limited warning."""
        log.warning(message, self.receiver_config.max_connections if arg is None else arg)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing answered yet
            self.transport.write(answer)
        self.transport.close()
        self._forget()

    def _forget(self) -> None:
        self._cancel_deadline()
        self.live.discard(self)
        self.waiting.pop(self, None)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def guarded_protocol(config: ReceiverConfig) -> type[GuardedH11Protocol]:
    """A protocol class for one server, with its own limits and connection registry."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"receiver_config": config, "live": set(), "waiting": {}},
    )


def fit_fd_limit(max_connections: int) -> int:
    """Raise the soft descriptor limit to fit `max_connections`; if the hard limit does not
    allow that, the connection cap that fits instead (with one warning)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(2, soft - FD_RESERVE)
        log.warning(
            "--max-connections %d does not fit the file descriptor limit %d: using %d",
            max_connections,
            soft,
            fitted,
        )
        return fitted
    return max_connections


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the receiver announces itself: a port in use is
    an OSError (EADDRINUSE) here, not a log line from inside uvicorn after the banner."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, f"{host}:{port} is already in use (see --port)") from None
        raise
    sock.set_inheritable(True)
    return sock


class ProtocolFactory:
    """`guarded_protocol(config)` as uvicorn's `http`, made in the process that uses it:
    uvicorn pickles its config into each worker process, and a class made by `type()`
    cannot be pickled."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self._protocol: type[GuardedH11Protocol] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_protocol": None}

    def __call__(self, *args: Any, **kwargs: Any) -> GuardedH11Protocol:
        if self._protocol is None:
            self._protocol = guarded_protocol(self.config)
        return self._protocol(*args, **kwargs)


@dataclass(frozen=True)
class AppFactory:
    """Builds one process's app: its own engine and writer, its refusal-log limits (after
    uvicorn has configured logging in that process). Picklable, secrets included: uvicorn
    hands it to each worker process through a pipe, never through argv or the environment."""

    config: ReceiverConfig
    database_url: str
    #: Hears of spikes (receiver/spikes.py); a module-level function, so it pickles.
    tell: Tell | None = None

    def __call__(self) -> FastAPI:
        limit_logs(self.config)
        return create_app(self.config, make_engine(self.database_url), self.tell)


def limit_logs(config: ReceiverConfig) -> None:
    """Rate-limit each flood-able warning: refusals, cut-off connections, uvicorn's
    "Invalid HTTP request". Call after uvicorn has configured its loggers."""
    log_limit.limit(
        ["wxpush.receiver", "uvicorn.error", "asyncio"],
        burst=config.refusal_log_burst,
        interval=config.refusal_log_interval_seconds,
    )


def _uvicorn_config(app: Any, config: ReceiverConfig, **more: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=ProtocolFactory(config),
        h11_max_incomplete_event_size=config.max_header_bytes,
        timeout_keep_alive=config.keep_alive_timeout_seconds,
        # A backstop on requests in progress (it counts connections too; ours are capped
        # at max_connections, each with at most one request at a time).
        limit_concurrency=2 * config.max_connections,
        log_level="warning",
        access_log=False,
        server_header=False,
        # SIGTERM ends the process within 10 s: requests in progress get this long (a push
        # waits at most commit_timeout_seconds), then the writer's close() its own bound.
        timeout_graceful_shutdown=5,
        **more,
    )


def serve(app: FastAPI, config: ReceiverConfig, sock: socket.socket) -> None:
    """Run `app` on the bound `sock` until SIGINT or SIGTERM, with the receiver's bounds."""
    config = config.model_copy(update={"max_connections": fit_fd_limit(config.max_connections)})
    server_config = _uvicorn_config(app, config)
    # After uvicorn.Config, which configures its loggers.
    limit_logs(config)
    uvicorn.Server(server_config).run(sockets=[sock])


def serve_processes(factory: AppFactory, sock: socket.socket, processes: int) -> None:
    """Run `processes` receiver processes accepting from the one bound `sock`, under
    uvicorn's supervisor, until SIGINT or SIGTERM (each process stops as `serve` does)."""
    config = factory.config
    config = config.model_copy(update={"max_connections": fit_fd_limit(config.max_connections)})
    factory = AppFactory(config, factory.database_url, factory.tell)
    server_config = _uvicorn_config(factory, config, factory=True, workers=processes)
    limit_logs(config)
    with _lean_main():
        Multiprocess(server_config, sockets=[sock]).run()


@contextlib.contextmanager
def _lean_main() -> Iterator[None]:
    """While the supervisor runs, `__main__` is an empty module. A spawned process first
    imports the parent's `__main__` (multiprocessing's spawn start method; uvicorn uses
    it): for `wxpush receiver` that is the whole CLI, Prefect included (importing
    cli.main: 6.7 s and 120 MiB; receiver.server: 2.7 s and 88 MiB, on 2 busy cores). The
    processes need only what the pickled factories name (receiver/, db/)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main
