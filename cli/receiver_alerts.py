"""What `wxpush receiver` does with a spike of refusals or unmatched receipts: the
`wxpush.receiver.spike` event the alert automations send (docs/alerts.md).

Posted over plain HTTP (`POST $PREFECT_API_URL/events`) from a thread of its own: the
receiver never imports Prefect (seconds of CPU) and never waits on the Prefect server, so a
spike costs no push its answer. A module-level function, so uvicorn hands it to each
receiver process by reference.
"""

from __future__ import annotations

import logging
import threading

import httpx

from config import prefect_api_url
from tasks.events import SpikeKind, receiver_spike

log = logging.getLogger("wxpush.receiver")

#: How long posting one event may take before it is given up (logged).
POST_TIMEOUT_SECONDS = 10.0


def tell_spike(kind: str, count: int, seconds: int, detail: str) -> None:
    """Post the spike's event to the Prefect server in the background; without
    PREFECT_API_URL (as `wxpush serve` and a worker set it), log it instead."""
    api = prefect_api_url()
    if api is None:
        log.warning(
            "Receiver: %d %s in %d s (%s); no PREFECT_API_URL to alert.",
            count,
            kind,
            seconds,
            detail,
        )
        return
    event = receiver_spike(SpikeKind(kind), count, seconds, detail).as_json()
    threading.Thread(target=_post, args=(api.rstrip("/") + "/events", event), daemon=True).start()


def _post(url: str, event: dict[str, object]) -> None:
    try:
        httpx.post(url, json=[event], timeout=POST_TIMEOUT_SECONDS).raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("Could not post the receiver's spike event (%s).", type(exc).__name__)
