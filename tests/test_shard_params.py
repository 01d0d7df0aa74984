"""The `shards` knob: its bounds, and the share of the campaign's rate and concurrency each
shard's run takes (the form says they are the whole campaign's)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.shard import share
from tests.campaign_helpers import params


def test_shards_default_to_one_and_have_bounds() -> None:
    assert params("default").shards == 1
    for wrong in (0, 33):
        with pytest.raises(ValidationError, match="shards"):
            params("default", shards=wrong)


def test_each_shard_takes_its_share_of_rate_and_concurrency() -> None:
    whole = params("default", shards=3, rate_per_second=30, concurrency=16)
    part = share(whole, 3)
    assert part.rate_per_second == pytest.approx(10)
    assert part.concurrency == 6  # rounded up: never 0
    assert share(params("default", concurrency=1), 4).concurrency == 1
    assert share(params("default"), 2).rate_per_second is None  # unlimited stays unlimited
    assert whole.rate_per_second == 30  # the campaign's own parameters are untouched
