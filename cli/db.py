"""`wxpush db upgrade` and `wxpush db current`: bring the database to the current schema (and
the `errcodes` reference table up to date), or say where it stands; `wxpush db audience-role`:
the read-only PostgreSQL role audience SQL runs as; `wxpush db prune`: delete old ledger rows,
callback events and interactions (db/retention.py). The database is `--database-url`, else
`$WXPUSH_DATABASE_URL`, else `./wxpush.db`."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.errors import BoundaryGroup

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL of the database.",
        show_default="$WXPUSH_DATABASE_URL, else sqlite:///./wxpush.db",
    ),
]


def register(app: typer.Typer) -> None:
    """Add the `db` command group to the `wxpush` app."""
    group = typer.Typer(
        name="db",
        help="The wxpush database: migrations, the audience role, retention.",
        no_args_is_help=True,
        cls=BoundaryGroup,
    )

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

    @group.command("audience-role")
    def audience_role_command(
        database_url: DatabaseUrl = None,
        name: Annotated[
            str, typer.Option("--name", help="The role to create or bring in line.")
        ] = "wxpush_audience",
        password: Annotated[
            str | None,
            typer.Option(
                "--password",
                help="Its password.",
                show_default="a new random one",
            ),
        ] = None,
    ) -> None:
        """Create (or bring in line) the PostgreSQL login role audience and digest SQL run
        as: it may only SELECT recipients and interactions. Prints the URL to put in
        WXPUSH_AUDIENCE_DATABASE_URL. Safe to run again (it sets a new password)."""
        from sqlalchemy.exc import DBAPIError
        from sqlalchemy.pool import NullPool

        from db.audience_role import ensure_audience_role  # AudienceRoleError: cli/errors.py
        from db.engine import AUDIENCE_ENV_VAR, make_engine

        engine = make_engine(database_url, poolclass=NullPool)
        try:
            if engine.dialect.name != "postgresql":
                typer.echo(_SQLITE_ROLES, err=True)
                return
            role = ensure_audience_role(engine, name, password)
        except DBAPIError as exc:
            from db.errors import error_code

            sqlstate = error_code(exc)
            diag = getattr(exc.orig, "diag", None)
            primary = getattr(diag, "message_primary", None) or "the database refused"
            typer.echo(
                f"error: cannot set up role {name}: {primary} (SQLSTATE {sqlstate}); run this "
                "as the database owner with CREATEROLE, or apply the GRANTs in "
                "docs/database.md by hand",
                err=True,
            )
            raise typer.Exit(1) from None
        finally:
            engine.dispose()
        action = "Created" if role.created else "Updated"
        typer.echo(
            f"{action} role {role.name}: LOGIN, read-only, SELECT on "
            f"{', '.join(role.granted)} in schema {role.schema}, nothing else. "
            f"Set {AUDIENCE_ENV_VAR} to:",
            err=True,
        )
        typer.echo(role.url)

    @group.command("prune")
    def prune_command(
        older_than: Annotated[
            str,
            typer.Option(
                "--older-than",
                help="Age to delete past: a whole number and h, d or w (180d, 12h, 2w).",
            ),
        ],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
        ] = False,
        force: Annotated[bool, typer.Option("--force", help="Allow an age under 7 days.")] = False,
        chunk_size: Annotated[
            int,
            typer.Option("--chunk-size", min=1, help="Rows per delete (one transaction each)."),
        ] = 5000,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Delete old rows: the ledger (deliveries) of campaigns that ended (completed,
        completed_with_failures, cancelled, failed) longer ago than --older-than, callback
        events received before then, and older interactions except each follower's latest.
        Running and paused campaigns keep their ledger; campaign rows and their counts stay;
        a pruned campaign can no longer be resumed. See docs/database.md, "Retention"."""
        from sqlalchemy.pool import NullPool

        from cli.errors import OperatorError
        from db.engine import make_engine
        from db.retention import MINIMUM_AGE, BadDuration, parse_duration, prune

        try:
            age = parse_duration(older_than)
        except BadDuration as exc:
            raise OperatorError(str(exc)) from None
        if age < MINIMUM_AGE and not force:
            raise OperatorError(
                f"--older-than {older_than} is under {MINIMUM_AGE.days} days; add --force if "
                "you mean to delete this recent history"
            )
        totals: dict[str, int] = {}

        def progress(table: str, rows: int) -> None:
            totals[table] = totals.get(table, 0) + rows
            typer.echo(f"  {table}: {totals[table]:,} deleted so far", err=True)

        engine = make_engine(database_url, poolclass=NullPool)
        try:
            result = prune(engine, age, dry_run=dry_run, chunk_size=chunk_size, progress=progress)
        finally:
            engine.dispose()
        typer.echo(result.describe())

    app.add_typer(group)


_SQLITE_ROLES = """\
SQLite has no roles, so there is no role to create. What protects the audience SQL on SQLite:
it runs on its own connection with PRAGMA query_only, under an authorizer that lets it read
any table except wxpush's ledger tables (campaigns, deliveries, callback_events, errcodes,
the analyst views) and refuses writes, ATTACH, PRAGMA and DDL, with a watchdog that
interrupts it at its time limit. Anyone who can open the database file can do anything to
it: protect wxpush.db with file permissions. See docs/database.md."""
