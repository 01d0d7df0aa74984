"""`wxpush simulator`: run the local WeChat API simulator in the foreground.

The flags are those of `python -m wechat.simulator` (one parser, generated from the simulator's
config models), passed through unchanged: `wxpush simulator --help` lists them all."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `wxpush` app."""

    @app.command(
        "simulator",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def simulator(ctx: typer.Context) -> None:
        """Run the local WeChat API simulator (default http://127.0.0.1:8900, demo account).

        Flags: --host --port --app-id --app-secret --token-expires-in --token-overlap
        --daily-quota --rate-limit --fault-seed … (see `wxpush simulator --help`).
        """
        from wechat.simulator.__main__ import main

        raise typer.Exit(main(ctx.args, prog="wxpush simulator"))
