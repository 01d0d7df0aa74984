"""Part 4, `rss`: peak RSS of dry-run campaigns (nothing sent) at each `--rss-sizes`."""

from __future__ import annotations

import time

from bench.campaign.campaigns import CampaignSpec, best_config, describe, run_campaign
from bench.campaign.common import RSS_APP, RSS_APP_ID, say
from bench.campaign.population import seed_population
from bench.campaign.services import Bench


def part_rss(bench: Bench, deadline: float) -> None:
    args = bench.args
    say(f"\n[rss] dry-run campaigns (nothing sent) at {args.rss_sizes} recipients")
    seed_deadline = min(deadline, time.monotonic() + args.max_seed_seconds)
    have = seed_population(
        bench, RSS_APP_ID, max(args.rss_sizes), register=False, deadline=seed_deadline
    )
    batch_size, concurrency = best_config(bench.report)
    for size in args.rss_sizes:
        if time.monotonic() > deadline:
            break
        if have < size:
            say(f"  only {have:,} rows seeded in time: {size:,} measured at {have:,}")
            size = have
        spec = CampaignSpec("rss", size, batch_size, concurrency, dry_run=True, app=RSS_APP)
        run = run_campaign(bench, spec, deadline)
        bench.report.rss.append(run)
        say(f"  {size:,} recipients: {describe(run)}")
