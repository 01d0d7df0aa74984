"""`wxpush simulator`: run the local WeChat API simulator in the foreground.

The flags are those of `python -m wechat.simulator` (one parser, generated from the simulator's
config models), passed through unchanged: `wxpush simulator --help` lists them all."""

from __future__ import annotations

import typer

PROG = "wxpush simulator"


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
        --daily-quota --rate-limit --fault-seed, --account APPID:SECRET (repeatable: more
        accounts on the same host) … (see `wxpush simulator --help`).
        """
        from wechat.simulator.__main__ import main

        if any(arg in ("--help", "-h") for arg in ctx.args):
            print_help(PROG)
            raise typer.Exit(0)
        raise typer.Exit(main(ctx.args, prog=PROG))


def print_help(prog: str) -> None:
    """The simulator's flags in the same panels as every other command's help, rendered
    from its own argparse parser (one parser, so the flags and defaults cannot differ)."""
    from rich import box
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from wechat.simulator.__main__ import build_parser

    parser = build_parser(prog)
    console = Console()
    console.print(Text.assemble("\n ", ("Usage: ", "yellow"), (f"{prog} [OPTIONS]", "bold"), "\n"))
    console.print(Text(f" {parser.description}\n"))
    for group in parser._action_groups:  # argparse keeps its groups in this one list
        actions = [action for action in group._group_actions if action.option_strings]
        if not actions:
            continue
        table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column(style="yellow", no_wrap=True)
        table.add_column()
        for action in actions:
            kind = action.metavar or getattr(action.type, "__name__", "text")
            metavar = "" if action.nargs == 0 else f"<{kind.lower()}>"
            text = (action.help or "").replace("%(default)s", str(action.default))
            if "-h" in action.option_strings:
                text = "Show this message and exit."
            table.add_row(", ".join(action.option_strings), metavar, Text(text))
        title = "Options" if group.title == "options" else group.title.capitalize()
        console.print(Panel(table, title=title, title_align="left", box=box.ROUNDED))
