"""Part 3, `rate`: campaigns with `rate_per_second`, achieved rate from the ledger."""

from __future__ import annotations

import time

from bench.campaign.campaigns import CampaignSpec, describe, run_campaign
from bench.campaign.common import RATE_BATCH_SECONDS, RATE_CONCURRENCY, say
from bench.campaign.services import Bench


def part_rate(bench: Bench, deadline: float) -> None:
    args = bench.args
    say(f"\n[rate] ~{args.rate_seconds:g} s of sends at each of {args.rates} msg/s")
    for rate in args.rates:
        if time.monotonic() > deadline:
            break
        n = max(2, int(rate * args.rate_seconds))
        batch = max(1, round(rate * RATE_BATCH_SECONDS))
        spec = CampaignSpec("rate", n, batch, RATE_CONCURRENCY, rate_per_second=rate)
        run = run_campaign(bench, spec, deadline)
        bench.report.rate.append(run)
        if run.span_rate:
            say(
                f"  configured {rate:g}/s: achieved {run.span_rate:.2f}/s "
                f"({run.span_rate / rate - 1:+.2%}), {describe(run)}"
            )
        else:
            say(f"  configured {rate:g}/s: {describe(run)}")
