"""What `wxpush receiver` does with a spike of refusals or unmatched receipts: a Prefect
event (`wxpush.receiver.spike`) the alert automations send (docs/alerts.md).

A module-level function, so uvicorn can hand it to each receiver process by reference;
Prefect is imported only at the first spike, so a receiver starts as fast as before.
"""

from __future__ import annotations

import logging

log = logging.getLogger("wxpush.receiver")


def tell_spike(kind: str, count: int, seconds: int, detail: str) -> None:
    """Emit the spike's event when a Prefect server is configured; else log it."""
    from prefect.settings import PREFECT_API_URL

    from tasks.events import SpikeKind, receiver_spike

    if not PREFECT_API_URL.value():  # no server to tell (and never start a temporary one)
        log.warning(
            "Receiver: %d %s in %d s (%s); no PREFECT_API_URL to alert.",
            count,
            kind,
            seconds,
            detail,
        )
        return
    receiver_spike(SpikeKind(kind), count, seconds, detail).emit()
