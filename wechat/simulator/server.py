"""Running the simulator: settings for one server, and `serve()` on aiohttp.web + uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from wechat.simulator.accounts import Accounts
from wechat.simulator.app import build_app
from wechat.simulator.config import AccountConfig, CallbackConfig, FaultConfig
from wechat.simulator.defaults import DEMO_APP_ID, DEMO_APP_SECRET
from wechat.simulator.state import SimulatorState

log = logging.getLogger("wechat.simulator")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8900


class ServerSettings(BaseModel):
    """Where to listen and what account to simulate."""

    model_config = ConfigDict(extra="forbid")

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    account: AccountConfig = Field(
        default_factory=lambda: AccountConfig(app_id=DEMO_APP_ID, app_secret=DEMO_APP_SECRET)
    )
    accounts: list[AccountConfig] = Field(
        default_factory=list,
        description="More accounts served on the same host (no demo data, callbacks off).",
    )
    faults: FaultConfig = Field(default_factory=FaultConfig)
    seed_demo: bool = Field(True, description="Register the demo template and follower.")
    callbacks: CallbackConfig = Field(
        default_factory=CallbackConfig, description="Callback pushes (off by default)."
    )


def new_state(settings: ServerSettings) -> SimulatorState:
    return SimulatorState(
        settings.account,
        settings.faults,
        seed_demo=settings.seed_demo,
        callbacks=settings.callbacks,
    )


async def start(settings: ServerSettings) -> tuple[web.AppRunner, SimulatorState]:
    """Start listening inside the running loop (for in-process use); stop with runner.cleanup().
    Returns the default account's state."""
    state = new_state(settings)
    accounts = Accounts(state, settings.accounts)
    runner = web.AppRunner(build_app(accounts), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port, backlog=1024).start()
    except OSError:  # e.g. the port is in use: close what setup() opened (the pusher's session)
        await runner.cleanup()
        raise
    return runner, state


async def _serve_forever(settings: ServerSettings) -> None:
    runner, _ = await start(settings)
    log.info(
        "WeChat API simulator on http://%s:%s (app_id %s%s; demo data %s)",
        settings.host,
        settings.port,
        settings.account.app_id,
        "".join(f", {account.app_id}" for account in settings.accounts),
        "on" if settings.seed_demo else "off",
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve(settings: ServerSettings) -> None:
    """Run until interrupted (Ctrl-C / SIGTERM), on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve_forever(settings))
