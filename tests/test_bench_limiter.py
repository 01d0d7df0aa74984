"""bench.limiter's arithmetic and bounds: the figures in docs/scaling.md come from these."""

from __future__ import annotations

import pytest

from bench.limiter import _max_window, parse_args


def test_max_window_counts_the_busiest_second() -> None:
    grants = [(0.0, 10), (0.5, 10), (0.99, 10), (1.2, 10), (2.5, 10)]
    # 0.0–0.99 holds three chunks; 0.5–1.2 also three; 1.2 and 2.5 are > 1 s apart.
    assert _max_window(grants, 1.0) == 30
    assert _max_window(grants, 0.1) == 10
    assert _max_window([], 1.0) == 0


def test_max_window_drops_grants_exactly_one_window_old() -> None:
    assert _max_window([(0.0, 5), (1.0, 7)], 1.0) == 7


def test_parse_args_bounds_every_run() -> None:
    args = parse_args([])
    assert args.procs == 3 and args.seconds == 10.0 and args.rates == [100.0, 200.0]
    with pytest.raises(SystemExit):
        parse_args(["--seconds", "600"])
    with pytest.raises(SystemExit):
        parse_args(["--procs", "50"])
    with pytest.raises(SystemExit):
        parse_args(["--rates", "0"])
