"""`wxpush db upgrade` and `wxpush db current`: bring the database to the current schema (and
the `errcodes` reference table up to date), or say where it stands. The database is
`--database-url`, else `$WXPUSH_DATABASE_URL`, else `./wxpush.db`."""

from __future__ import annotations

from typing import Annotated

import typer

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL (default: $WXPUSH_DATABASE_URL, else sqlite:///./wxpush.db).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add the `db` command group to the `wxpush` app."""
    group = typer.Typer(name="db", help="The wxpush database: migrations.", no_args_is_help=True)

    @group.command("upgrade")
    def upgrade_command(database_url: DatabaseUrl = None) -> None:
        """Create or migrate the tables to the newest schema and refresh the errcodes
        reference table the analyst views join (safe to run again)."""
        from sqlalchemy.pool import NullPool

        from db.engine import make_engine
        from db.migrate import upgrade
        from tasks.reference import sync_errcodes_table

        result = upgrade(database_url)
        typer.echo(result.describe())
        # The errcode meanings live in wechat/errors.py, which the migration may not import.
        engine = make_engine(result.url, poolclass=NullPool)
        try:
            typer.echo(sync_errcodes_table(engine).describe())
        finally:
            engine.dispose()

    @group.command("current")
    def current_command(database_url: DatabaseUrl = None) -> None:
        """Print the database's schema revision; exit 1 when it is behind the code."""
        from db.engine import database_url as resolve
        from db.engine import display_url
        from db.migrate import current_revision, head_revision

        url = resolve(database_url)
        current, head = current_revision(url), head_revision()
        where = display_url(url)
        if current == head:
            typer.echo(f"{where}: {current} (latest)")
            return
        state = "not migrated" if current is None else f"at {current}"
        typer.echo(f"{where}: {state}; the latest is {head}. Run `wxpush db upgrade`.")
        raise typer.Exit(1)

    app.add_typer(group)
