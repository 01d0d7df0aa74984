"""The `refresh_access_token` flow: keeps `wechat-access-token/<app>` fresh on a schedule.

Deploy it every 2 minutes per app (docs/tokens.md). Each run:

1. refreshes if the block has no token or less than `margin_seconds` of life left;
2. otherwise, with `verify`, makes one cheap authenticated call (getcallbackip); if WeChat
   refuses the token (40001/40014/42001) it refreshes through compare-and-expire, and
   checks the replacement once more — a second refusal fails the run with a ConfigError
   instead of looping;
3. otherwise does nothing.

Margin vs stable_token: in normal mode WeChat issues a new token only in the last 300 s of
the old one's life; a call before that returns the same token with a shorter `expires_in`.
So the default margin is exactly 300 s, and for stable-mode apps a larger margin is capped
at 300 s (it could only re-fetch the same token). With a 2-minute schedule every token gets
two chances to be rolled before it expires; the old token stays valid until its own expiry,
so senders holding it are never cut off. Classic mode honours any margin (each fetch is a
new token; the old one lives on for 5 minutes).

The token never appears in parameters, logs, results or artifacts: the run returns a
`RefreshResult` (action, expiry).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from tasks.blocks import APP_NAME_PATTERN
from tasks.token import (
    REFRESH_MARGIN_SECONDS,
    RefreshResult,
    ensure_token_task,
    verify_token_task,
)
from tasks.token_watch import tell_if_refresh_failing


@flow(
    name="refresh-access-token",
    flow_run_name="refresh-access-token-{app}",
    timeout_seconds=300,
    log_prints=False,
    on_failure=[tell_if_refresh_failing],
    on_crashed=[tell_if_refresh_failing],
)
async def refresh_access_token(
    app: Annotated[str, Field(pattern=APP_NAME_PATTERN)] = "default",
    margin_seconds: Annotated[int, Field(ge=0, le=3600)] = REFRESH_MARGIN_SECONDS,
    verify: bool = True,
) -> RefreshResult:
    """Refresh the access_token of one WeChat app if it is missing, expiring or refused.

    Args:
        app: Name of the wechat-app block (and of its wechat-access-token block).
        margin_seconds: Refresh when less than this many seconds of token life remain.
            Stable-mode apps cap it at 300: WeChat only rolls the token in its last 300 s.
        verify: Also ask WeChat (one getcallbackip call) whether the token really works,
            and compare-and-expire it if not.
    """
    logger = get_run_logger()
    result = await ensure_token_task(app, margin_seconds)
    if verify:
        # Also checks a token fetched this very run, so a wrong account shows up now.
        checked = await verify_token_task(app)
        action = result.action if result.action != "kept" else checked.action
        result = checked.model_copy(update={"action": action})
    left = int((result.expires_at - datetime.now(UTC)).total_seconds())
    logger.info(
        "App %r: token %s; expires at %s (%d s left)%s.",
        app,
        result.action,
        result.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        left,
        ", accepted by WeChat" if result.verified else "",
    )
    return result


if __name__ == "__main__":  # pragma: no cover
    import asyncio

    print(asyncio.run(refresh_access_token()))
