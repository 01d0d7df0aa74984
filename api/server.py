"""Running the push API: the app wired to Prefect (keys, blocks, tokens) and the database,
served by uvicorn on uvloop + httptools.

`build_app` is what `wxpush api` serves; `serve` runs it on a socket the caller bound (so a
port in use is one line from the CLI, before anything starts). One Prefect client serves
every read of the process (keys every 2 s, blocks, tokens): a new client per read would
build a TLS context each time, on the event loop.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from contextlib import AsyncExitStack
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine

from api.app import ApiConfig, LeanRoutes, create_app
from api.dispatch import Dispatcher
from api.store import Store

__all__ = ["PrefectReads", "build_app", "serve"]


class PrefectReads:
    """The API's reads of the Prefect API, through one client opened at first use."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    from prefect.client.orchestration import get_client

                    self._client = await self._stack.enter_async_context(get_client())
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def keys(self) -> dict[str, Any]:
        from tasks.api_keys import load_keys

        return await load_keys(await self.client())

    async def app(self, name: str) -> Any:
        from tasks.token import load_app

        return await load_app(name, await self.client())

    async def token(self, app: str) -> SecretStr:
        """The Block's token; a refresh (tasks.token's locked path) only when it is missing
        or about to expire, as a campaign's batch reads it."""
        from tasks.token import SENDER_MARGIN_SECONDS, get_access_token, read_token

        stored = await read_token(app, await self.client())
        if stored is not None and stored.usable(SENDER_MARGIN_SECONDS):
            return stored.access_token
        return await get_access_token(app)


def build_app(engine: Engine, config: ApiConfig | None = None) -> FastAPI:
    """The API over `engine`, its keys, blocks and tokens from the Prefect API
    (PREFECT_API_URL), as the campaigns read them."""
    from tasks.token import refresh_if_current

    config = config or ApiConfig()
    prefect = PrefectReads()

    def dispatcher(store: Store) -> Dispatcher:
        return Dispatcher(
            store,
            engine,
            load_app=prefect.app,
            get_token=prefect.token,
            refresh=refresh_if_current,
            concurrency=config.concurrency,
            request_timeout=config.request_timeout_seconds,
        )

    return create_app(
        engine, config=config, keys=prefect.keys, dispatcher=dispatcher, on_close=prefect.close
    )


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Run `app` on the bound `sock` until SIGINT or SIGTERM (single messages take the lean
    route, see api.app.LeanRoutes)."""
    config = uvicorn.Config(
        LeanRoutes(app),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    # Everything imported so far (Prefect, pydantic, SQLAlchemy, FastAPI: ~200,000 objects)
    # lives as long as the process: frozen, the collector's passes no longer walk it. Under
    # load those passes were the API's p99 (bench.api single: p99 ~230 -> ~90 ms).
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock])
