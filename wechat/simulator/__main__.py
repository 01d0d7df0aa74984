"""`python -m wechat.simulator [--port 8900 --app-id … --daily-quota … --drop-rate …]`.

Every field of AccountConfig and FaultConfig is a flag (`--field-name`), so the command line
and the admin API can never disagree about what is configurable. `wxpush simulator` runs this."""

from __future__ import annotations

import argparse
import logging
import sys
import types
from collections.abc import Sequence
from typing import Any, Final, Union, get_args, get_origin

from pydantic import BaseModel

from config import settings
from wechat.simulator.config import AccountConfig, CallbackConfig, FaultConfig
from wechat.simulator.defaults import (
    APP_SECRET_ENV,
    CALLBACK_TOKEN_ENV,
    DEMO_APP_ID,
    DEMO_APP_SECRET,
    ENCODING_AES_KEY_ENV,
)
from wechat.simulator.server import DEFAULT_HOST, DEFAULT_PORT, ServerSettings, serve

# Flags with a name other than --field-name (kept short, as the project's docs use them).
FLAG_NAMES: Final[dict[str, list[str]]] = {
    "classic_overlap_seconds": ["--token-overlap", "--classic-overlap-seconds"],
    "stable_roll_seconds": ["--stable-roll", "--stable-roll-seconds"],
    "rate_limit_per_second": ["--rate-limit", "--rate-limit-per-second"],
    "seed": ["--fault-seed"],
}


def _scalar(annotation: Any) -> Any:
    """int for `int | None`, etc."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _account_defaults() -> dict[str, str]:
    """The demo account, with the secret taken from $WXPUSH_SIMULATOR_APP_SECRET if set."""
    secret = settings().simulator_app_secret
    return {
        "app_id": DEMO_APP_ID,
        "app_secret": secret.get_secret_value() if secret else DEMO_APP_SECRET,
    }


def _add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], title: str) -> None:
    group = parser.add_argument_group(title)
    for name, field in model.model_fields.items():
        flags = FLAG_NAMES.get(name, ["--" + name.replace("_", "-")])
        kind = _scalar(field.annotation)
        shown = {"app_id": DEMO_APP_ID, "app_secret": f"${APP_SECRET_ENV} or the demo's"}.get(
            name, field.default
        )
        help_text = f"{field.description or ''} [default: {shown}]"
        if kind is bool:
            group.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(
                *flags,
                dest=name,
                type=kind,
                default=None,
                metavar=kind.__name__.upper(),
                help=help_text,
            )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m wechat.simulator",
        description="A local WeChat Official Account API server (tokens, template/custom/"
        "subscribe sends, faults) with an admin API under /_sim/.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="[default: %(default)s]")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="[default: %(default)s]")
    parser.add_argument(
        "--no-demo",
        dest="seed_demo",
        action="store_false",
        help="Start without the demo template and follower.",
    )
    _add_model_flags(parser, AccountConfig, "account")
    parser.add_argument(
        "--account",
        dest="accounts",
        action="append",
        type=_extra_account,
        default=[],
        metavar="APPID:SECRET[:DAILY_QUOTA]",
        help="Serve one more account on the same host (repeatable): no demo data, callbacks "
        "off, the other settings as the flags above. Its secret is visible in the process "
        "list: use test secrets only.",
    )
    _add_model_flags(parser, FaultConfig, "faults")
    group = parser.add_argument_group("callbacks (more settings: POST /_sim/callbacks/config)")
    group.add_argument(
        "--callback-url",
        default=None,
        help=f"Push receipts and follower actions here; the token comes from "
        f"${CALLBACK_TOKEN_ENV}, the EncodingAESKey (safe mode) from ${ENCODING_AES_KEY_ENV}.",
    )
    return parser


def _extra_account(text: str) -> tuple[str, str, int | None]:
    """APPID:SECRET[:DAILY_QUOTA] of --account (argparse shows the error, never the value)."""
    app_id, _, rest = text.partition(":")
    secret, _, quota = rest.partition(":")
    if not app_id or not secret:
        raise argparse.ArgumentTypeError("--account needs APPID:SECRET[:DAILY_QUOTA]")
    if quota and not quota.isdigit():
        raise argparse.ArgumentTypeError("the DAILY_QUOTA of --account must be an integer >= 0")
    return app_id, secret, int(quota) if quota else None


def _callbacks(url: str | None) -> CallbackConfig:
    """The callback config of the command line; secrets only from the environment."""
    if url is None:
        return CallbackConfig()
    given = settings()
    return CallbackConfig(
        callback_url=url,
        callback_token=given.simulator_callback_token,
        encoding_aes_key=given.simulator_encoding_aes_key,
    )


def settings_from_args(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> ServerSettings:
    args = vars(build_parser(prog).parse_args(argv))

    def given(model: type[BaseModel]) -> dict[str, Any]:
        return {name: args[name] for name in model.model_fields if args.get(name) is not None}

    account = AccountConfig(**{**_account_defaults(), **given(AccountConfig)})
    extra: list[AccountConfig] = []
    for app_id, secret, quota in args["accounts"]:
        if app_id in {account.app_id, *(other.app_id for other in extra)}:
            raise SystemExit(f"--account {app_id}: this app_id is served already")
        quota_field = {} if quota is None else {"daily_quota": quota}
        settings_of = {**given(AccountConfig), "app_id": app_id, "app_secret": secret}
        extra.append(AccountConfig(**{**settings_of, **quota_field}))
    return ServerSettings(
        host=args["host"],
        port=args["port"],
        account=account,
        accounts=extra,
        faults=FaultConfig(**given(FaultConfig)),
        seed_demo=args["seed_demo"],
        callbacks=_callbacks(args["callback_url"]),
    )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    settings = settings_from_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
