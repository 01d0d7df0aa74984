"""Part 2, `e2e`: `push_campaign` end to end for each batch × concurrency of the grid, then
the fastest at the other sizes (`--repeat` times each, a ceiling run between), bracketed by
the ceiling."""

from __future__ import annotations

import time

from bench.campaign.campaigns import CampaignSpec, describe, run_campaign
from bench.campaign.ceiling import measure_bare
from bench.campaign.common import say
from bench.campaign.results import CampaignRun
from bench.campaign.services import Bench


def part_e2e(bench: Bench, deadline: float) -> None:
    """The grid at the first size; the `--top` fastest configurations at the other sizes;
    then the ceiling once more, right after, to show how much the machine drifted."""
    args = bench.args
    first, *others = args.sizes
    say(f"\n[e2e] {first:,} recipients for each of {len(args.grid)} batch × concurrency")
    tried: list[CampaignRun] = []
    for batch_size, concurrency in args.grid:
        if time.monotonic() > deadline:
            break
        run = run_campaign(bench, CampaignSpec("e2e", first, batch_size, concurrency), deadline)
        tried.append(run)
        bench.report.e2e.append(run)
        say(f"  batch {batch_size:>5} × {concurrency:>3} in flight: {describe(run)}")
    ranked = sorted((r for r in tried if r.consistent), key=lambda r: -r.wall_rate)
    ceiling = bench.report.ceiling_run()
    if ceiling is not None and others and ranked:  # bracket the long runs (a noisy machine)
        measure_bare(bench, ceiling.stack, ceiling.concurrency, deadline, when="again")
    # One size only: its repeats follow the grid (the grid's own run counts as the first).
    repeats = {size: args.repeat for size in others} or {first: args.repeat - 1}
    for size, times in repeats.items():
        for best in ranked[: args.top]:
            for round_ in range(1, times + 1):
                if time.monotonic() > deadline:
                    say(f"  --max-seconds reached: {size:,} not run")
                    break
                if ceiling is not None and (round_ > 1 or size == first):
                    # Interleaved, so the goal compares medians taken over the same drift.
                    measure_bare(bench, ceiling.stack, ceiling.concurrency, deadline, "between")
                spec = CampaignSpec("e2e", size, best.batch_size, best.concurrency)
                run = run_campaign(bench, spec, deadline)
                bench.report.e2e.append(run)
                say(f"  {size:,}, batch {best.batch_size} × {best.concurrency}: {describe(run)}")
    if ceiling is not None and ranked and time.monotonic() < deadline - 30:
        measure_bare(bench, ceiling.stack, ceiling.concurrency, deadline, when="after")
