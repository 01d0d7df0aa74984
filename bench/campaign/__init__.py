"""wxpush end to end against its raw ceiling, on one simulator, in one run.

    .venv/bin/python -m bench.campaign                  # everything, SQLite (~15 min)
    .venv/bin/python -m bench.campaign --parts ceiling,e2e --sizes 10000
    .venv/bin/python -m bench.campaign --database-url postgresql://postgres@127.0.0.1:5432/test

Run it as a module from the repository root (it imports `bench.simulator` and
`bench.sender`, whose bare loops it reuses). One module per part (`ceiling.py`, `e2e.py`,
`rate.py`, `rss.py`, `map.py`, `profiling.py`), the child runner (`runner.py`, and `child.py`
for what runs inside the child), the report (`report.py`), the command line (`main.py`).
It starts, and stops at the end (`processes`, the project's one way to run a child):

- the WeChat API simulator (`python -m wechat.simulator`, faults off, daily quota 10^9);
- a Prefect server: `prefect server start` in a subprocess with a temporary PREFECT_HOME
  (a real API server with its services, as an operator runs it; not
  `prefect_test_harness`, which the tests use);
- a temporary database: a SQLite file, or with `--database-url` a fresh schema on that
  PostgreSQL server (dropped at the end).

The audience is `db.seed.seed_recipients` data (Chinese and Latin nicknames, interaction ages
0-10 days, some unsubscribed, blocked or with names too long for a `thing` field), registered
as followers in the simulator and analyzed once written (the planner knows them before the
first campaign), and a custom audience SQL (`audience_sql` below) that picks
the sendable rows: subscribed, not blocked, interacted, nickname ≤ 20 characters, the first
N by openid. `window_hours` is 264 (11 days): the window CASE still runs on every row, and
every row is inside it. The message is the demo template with `{nickname}` in `thing1`.

Parts (`--parts`, in this order):

1. `ceiling` — bare async loops in this process, no database, no Prefect, sending the same
   template message to the same followers: httpx + `httpx_aiohttp.AiohttpTransport` (the
   transport wxpush uses) and, for context, raw aiohttp, at the campaign's concurrency and
   twice it (a campaign runs two batches at once). **The ceiling** is the fastest httpx +
   aiohttp-transport run (the issue's definition of the raw ceiling).
2. `e2e` — `push_campaign` in a child process (`--child campaign`): audience SQL → window →
   `send_batch` tasks → ledger → report, rate limit off, for each `--grid` batch × concurrency
   at the first `--sizes` size, then the best of them at the other sizes. msg/s = sent ÷ the
   wall time of the `push_campaign` call, and sent ÷ the send span in the ledger (first
   attempt → last sent_at); the longest pause is the widest gap between two consecutive
   first attempts (a campaign waiting for its next batch). The simulator is reset before
   each campaign, and its accepted count must equal the ledger's sent count. With several
   sizes, the goals compare msg/s at the largest and the smallest (issue 15: a campaign
   must not slow down as it runs), e.g. `--sizes 100000,300000 --grid 2000x16 --top 1`.
3. `rate` — campaigns with `rate_per_second` at each `--rates`, `--rate-seconds` of sends
   each; achieved = sent ÷ (last sent_at − first attempt) from the ledger.
4. `rss` — peak RSS (the child's `ru_maxrss` from wait4) of **dry-run** campaigns at each
   `--rss-sizes` (stream the whole audience, render and check every message, send nothing:
   sending a million messages takes too long here). Its audience is a second app, seeded
   without simulator followers; seeding is bounded by `--max-seed-seconds`.
5. `map` — one Prefect task per message (`.map` on a ThreadPoolTaskRunner with
   `--map-workers` threads), `--map-size` recipients, for contrast.

`--max-seconds` bounds each part; a campaign still running at its part's deadline is killed
and reported. `--profile-dir DIR` adds one e2e run of the best configuration at the largest
size under py-spy and prints where its CPU time went (that run's figures are not used).
The last line printed is one JSON object with every figure.
"""
