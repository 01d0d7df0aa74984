"""Running the push API: the app wired to Prefect (keys, blocks, tokens) and the database,
served by uvicorn on uvloop + httptools.

`build_app` is what `wxpush api` serves; `serve` runs it on a socket the caller bound (so a
port in use is one line from the CLI, before anything starts).
"""

from __future__ import annotations

import socket

import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from api.app import ApiConfig, create_app
from api.dispatch import Dispatcher
from api.store import Store

__all__ = ["build_app", "serve"]


def build_app(engine: Engine, config: ApiConfig | None = None) -> FastAPI:
    """The API over `engine`, its keys, blocks and tokens from the Prefect API
    (PREFECT_API_URL), as the campaigns read them."""
    from tasks.api_keys import load_keys
    from tasks.token import get_access_token, load_app, refresh_if_current

    config = config or ApiConfig()

    def dispatcher(store: Store) -> Dispatcher:
        return Dispatcher(
            store,
            engine,
            load_app=load_app,
            get_token=get_access_token,
            refresh=refresh_if_current,
            concurrency=config.concurrency,
            request_timeout=config.request_timeout_seconds,
        )

    return create_app(engine, config=config, keys=load_keys, dispatcher=dispatcher)


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Run `app` on the bound `sock` until SIGINT or SIGTERM."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])
