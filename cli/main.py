"""The `wxpush` console script: one Typer app; each subcommand lives in its own module."""

from __future__ import annotations

import typer

from cli import campaign, db, demo, deploy, digest, receiver, seed, serve, setup, simulator

app = typer.Typer(
    name="wxpush",
    help="WeChat message campaigns orchestrated by Prefect.",
    no_args_is_help=True,
    add_completion=False,
)

for module in (simulator, setup, db, seed, campaign, digest, demo, deploy, serve, receiver):
    module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
