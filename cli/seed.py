"""`wxpush seed --recipients N`: realistic sample recipients in the database and, with
`--simulator-url`, the same followers in the local WeChat simulator (same subscribed / blocked /
last interaction), so a campaign against the simulator sees what the database says.

The SQL lives in db/seed.py; the simulator call lives here because db/ never imports wechat/.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from cli.db import DatabaseUrl

SIMULATOR_CHUNK = 20_000  # followers per POST /_sim/followers


def follower_payload(recipient: Any) -> dict[str, Any]:
    """A seeded recipient as the simulator's follower (same subscribed/blocked/last interaction)."""
    last = recipient.last_interaction_at
    return {
        "openid": recipient.openid,
        "subscribed": recipient.subscribed,
        "blocked": recipient.blocked,
        "last_interaction_at": None if last is None else last.isoformat(),
    }


def register(app: typer.Typer) -> None:
    """Add `wxpush seed` to the app."""

    @app.command("seed")
    def seed(
        recipients: Annotated[
            int, typer.Option("--recipients", "-n", min=0, help="How many recipients.")
        ] = 1000,
        app_id: Annotated[
            str | None,
            typer.Option(
                "--app-id",
                help="AppID they follow.",
                show_default="$WXPUSH_APP_ID, else the simulator's demo app",
            ),
        ] = None,
        simulator_url: Annotated[
            str | None,
            typer.Option(
                "--simulator-url",
                help="Also register them as followers in this simulator, e.g. "
                "http://127.0.0.1:8900.",
                show_default="none: the database only",
            ),
        ] = None,
        seed_value: Annotated[
            int, typer.Option("--seed", help="Random seed: same seed, same recipients.")
        ] = 42,
        replace: Annotated[
            bool,
            typer.Option("--replace", help="First delete every recipient of the app."),
        ] = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Write realistic sample recipients (and register them in the simulator).

        About 30% are outside the 48-hour window, 3% unsubscribed, 1% blocked, 5% have names
        too long for a `thing` field. Running it again with the same seed updates the same
        recipients instead of adding more.
        """
        from config import settings
        from db.engine import display_url, make_engine
        from db.migrate import upgrade
        from db.seed import seed_recipients
        from wechat.simulator.defaults import DEMO_APP_ID

        app_id = app_id or settings().app_id or DEMO_APP_ID
        admin = None
        now: datetime | None = None
        if simulator_url:  # checked first: a wrong URL or app changes nothing
            admin, now = _connect_simulator(simulator_url, app_id)
        migration = upgrade(database_url)
        if migration.changed:
            typer.echo(migration.describe())
        registered = {"created": 0, "updated": 0}

        def to_simulator(chunk: Sequence[Any]) -> None:
            assert admin is not None
            for start in range(0, len(chunk), SIMULATOR_CHUNK):
                part = [follower_payload(r) for r in chunk[start : start + SIMULATOR_CHUNK]]
                result = admin.add_followers(part)
                registered["created"] += result.created
                registered["updated"] += result.updated

        engine = make_engine(migration.url)
        try:
            with engine.begin() as connection:
                result = seed_recipients(
                    connection,
                    app_id=app_id,
                    count=recipients,
                    seed=seed_value,
                    now=now,
                    replace=replace,
                    on_chunk=to_simulator if admin is not None else None,
                )
        finally:
            engine.dispose()
            if admin is not None:
                admin.close()
        typer.echo(f"{display_url(migration.url)}:")
        for line in result.lines():
            typer.echo(f"  {line}")
        if simulator_url:
            typer.echo(
                f"  simulator {simulator_url}: {registered['created']:,} followers added, "
                f"{registered['updated']:,} updated"
            )


def _connect_simulator(url: str, app_id: str) -> tuple[Any, datetime]:
    """The admin client and the simulator's clock (interaction ages are relative to it)."""
    import httpx

    from wechat.simulator.admin import SimulatorAdmin

    admin = SimulatorAdmin(url)
    try:
        admin.health()
        simulated = admin.config().app_id
        clock = admin.clock()
    except httpx.HTTPError as exc:
        admin.close()
        raise typer.BadParameter(
            f"cannot reach the simulator's admin API at {url} ({exc}); start it with "
            "`wxpush simulator`",
            param_hint="--simulator-url",
        ) from None
    if simulated != app_id:
        admin.close()
        raise typer.BadParameter(
            f"the simulator at {url} simulates app {simulated}, not {app_id}; "
            f"use --app-id {simulated}",
            param_hint="--app-id",
        )
    now = clock.now_iso
    return admin, now if now.tzinfo is not None else now.replace(tzinfo=UTC)
