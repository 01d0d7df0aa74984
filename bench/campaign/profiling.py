"""`--profile-dir`: one more e2e run under py-spy, and where its CPU time went."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.campaign.campaigns import CampaignSpec, best_config, describe, run_campaign
from bench.campaign.common import say
from bench.campaign.services import Bench

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
#: Components, by the file of the innermost frame that belongs to one (py-spy prints paths
#: relative to sys.path, so a prefix names the package). Stdlib frames are skipped, so a
#: socket write made by aiohttp counts as the HTTP client.
COMPONENTS = (
    ("wxpush: render + field rules", ("sending/message.py", "wechat/fields.py")),
    ("wxpush: send engine + WeChat client", ("sending/", "wechat/")),
    ("wxpush: audience, ledger, batch, flow", ("db/", "flows/", "tasks/")),
    ("HTTP client: httpx, httpx_aiohttp, aiohttp", ("httpx", "aiohttp/", "yarl/", "multidict/")),
    ("database: SQLAlchemy + driver", ("sqlalchemy/", "psycopg/")),
    ("Prefect (engine, client, events, logs)", ("prefect/", "websockets/", "anyio/", "coolname/")),
    ("pydantic", ("pydantic",)),
)
STDLIB = (  # categories of a sample with no package frame at all, by its leaf
    ("event loop: select, sockets, TLS", ("asyncio/", "selectors.py", "socket.py", "ssl.py")),
    ("threads, queues, locks", ("threading.py", "queue.py", "concurrent/")),
    ("logging", ("logging/",)),
)


def frame_file(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    return (match.group("func"), match.group("file")) if match else (frame, "")


def categorize(frames: Sequence[str]) -> str:
    """The component of the innermost package frame, else the stdlib category of the leaf."""
    for frame in reversed(frames):
        _, file_ = frame_file(frame)
        for label, prefixes in COMPONENTS:
            if file_.startswith(prefixes):
                return label
    _, leaf = frame_file(frames[-1])
    for label, prefixes in STDLIB:
        if leaf.startswith(prefixes):
            return label
    return "other: interpreter, GC, stdlib"


def thread_name(frames: Sequence[str]) -> str:
    name = next((f for f in frames if f.startswith("thread (")), "thread (?): ?")
    return re.sub(r"[-_]\d+(_\d+)?$", "", name.split(": ", 1)[-1])


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Where on-CPU samples went, from py-spy's raw (collapsed) output: by component
    (innermost package frame), by thread, and the top leaf functions."""
    by_component: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        by_component[categorize(frames)] += count
        by_thread[thread_name(frames)] += count
        func_, file_ = frame_file(frames[-1])
        by_function[f"{func_} ({'/'.join(file_.split('/')[-2:])})"] += count
    if not total:
        return {"samples": 0, "file": str(path)}

    def shares(counter: Counter[str], n: int | None = None) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in counter.most_common(n)}

    return {
        "samples": total,
        "by_component": shares(by_component),
        "by_thread": shares(by_thread),
        "top_leaf_functions": shares(by_function, top),
        "file": str(path),
    }


def part_profile(bench: Bench, deadline: float) -> None:
    """One extra e2e run under py-spy (timings perturbed, not reported as figures)."""
    folder = Path(bench.args.profile_dir)
    folder.mkdir(parents=True, exist_ok=True)
    batch_size, concurrency = best_config(bench.report)
    size = max(bench.args.sizes)
    say(f"\n[profile] {size:,} recipients, batch {batch_size} × {concurrency}, under py-spy")
    output = folder / f"campaign-{size}.txt"
    spec = CampaignSpec("profile", size, batch_size, concurrency)
    run = run_campaign(bench, spec, deadline, profile=output)
    say(f"  (profiled, slower) {describe(run)}")
    if not output.exists():
        say("  py-spy wrote no profile")
        return
    summary = summarize_profile(output)
    bench.report.profile = summary
    if not summary["samples"]:
        say("  the profile is empty")
        return
    say(f"  {summary['samples']:,} on-CPU samples (200/s, every thread) during the flow call")
    for title, key in (
        ("by component (innermost package frame)", "by_component"),
        ("by thread", "by_thread"),
        ("top leaf functions", "top_leaf_functions"),
    ):
        say(f"  {title}:")
        for label, share in summary[key].items():
            say(f"    {share:>6.1%}  {label}")
