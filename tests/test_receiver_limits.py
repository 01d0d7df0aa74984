"""The receiver's unauthenticated side has bounds, measured on a real `wxpush receiver`
process: header size, slow and idle partial requests, the connection cap, long nonces, the
nonce cache, refusal logging, no API docs. Short timeouts come from the command's options,
so the whole file runs in seconds; each test prints the figures it asserts on."""

from __future__ import annotations

import logging
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest

from bench.receiver import TOKEN, ReceiverProcess, build, start_receiver
from db.migrate import upgrade
from receiver.log_limit import RateLimitFilter
from receiver.replay import NonceCache, NonceRefused
from tests.fixtures.database import DatabaseFactory
from tests.waiting import wait_until
from wechat.crypto import signed_query
from wechat.events import to_xml

MAX_CONNECTIONS = 100
FD_LIMIT = 256  # the receiver's own soft limit in these tests: below the flood's 300
NONCE_CACHE = 30
BURST = 5
LIMITS = [
    "--header-timeout", "1",
    "--body-timeout", "1",
    "--keep-alive-timeout", "1",
    "--max-connections", str(MAX_CONNECTIONS),
    "--nonce-cache-entries", str(NONCE_CACHE),
    "--refusal-log-burst", str(BURST),
    "--refusal-log-interval", "1",
]  # fmt: skip
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver(database_factory: DatabaseFactory) -> Iterator[ReceiverProcess]:
    """One receiver for the module, on SQLite, with short timeouts and a low fd limit."""
    url = database_factory.new("sqlite")
    upgrade(url)
    process = start_receiver(url, args=LIMITS)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(process.process.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, hard))
    yield process
    assert process.stop(timeout=30) < 10


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    """File descriptors a process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def push(base: str, nonce: str, msgid: int, stamp: str | None = None) -> httpx.Response:
    """One validly signed plaintext receipt with the given nonce."""
    stamp = stamp or str(int(time.time()))
    body = to_xml(
        {
            "ToUserName": "gh_limits",
            "FromUserName": "o-limits",
            "CreateTime": int(stamp),
            "MsgType": "event",
            "Event": "TEMPLATESENDJOBFINISH",
            "MsgID": msgid,
            "Status": "success",
        }
    )
    return httpx.post(
        f"{base}/wechat/callback",
        params=signed_query(TOKEN, stamp, nonce),
        content=body,
        timeout=10,
    )


def one_real_push(base: str) -> httpx.Response:
    """A push exactly as WeChat sends it (bench.receiver builds and signs it)."""
    query, body = build("plaintext", 1, first_msgid=time.time_ns())[0]
    query = signed_query(TOKEN, query["timestamp"], f"{time.time_ns() % 10**9}")
    return httpx.post(f"{base}/wechat/callback", params=query, content=body, timeout=5)


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes (or resets) the connection within `within` seconds; an
    answer such as 408 or 400 before the close counts as closed."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def flood_headers(base: str, connections: int, size: int) -> list[socket.socket]:
    """`connections` clients each sending `size` bytes of one header line that never ends;
    returns the sockets, still open from our side."""
    socks = [connect(base) for _ in range(connections)]
    chunk = b"a" * MiB

    def send(sock: socket.socket) -> None:
        try:
            sock.sendall(b"POST /wechat/callback HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            for _ in range(size // MiB):
                sock.sendall(chunk)
        except OSError:  # the server cut us off: that is the point
            pass

    threads = [threading.Thread(target=send, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return socks


@pytest.mark.process
def test_oversized_headers_are_cut_off_and_memory_stays_bounded(
    receiver: ReceiverProcess,
) -> None:
    pid = receiver.process.pid
    before = rss_mib(pid)
    socks = flood_headers(receiver.base, connections=20, size=32 * MiB)
    time.sleep(0.5)
    during = rss_mib(pid)
    cut = sum(closed_by_server(sock, within=5) for sock in socks)
    for sock in socks:
        sock.close()
    invalid = _lines(receiver.output(), "Invalid HTTP request")
    print(f"\nRSS {before:.0f} MiB before, {during:.0f} MiB with 20 x 32 MiB headers sent")
    print(f"{len(invalid)} lines of uvicorn's 'Invalid HTTP request' warning for 20")
    print(f"{cut} of 20 connections cut off by the receiver")
    assert cut == 20
    assert len(invalid) <= 2 * BURST, "rate-limited"
    assert during - before < 32, "unfinished headers are not buffered"
    assert one_real_push(receiver.base).text == "success"


@pytest.mark.process
def test_slow_partial_requests_are_closed_and_fds_stay_bounded(
    receiver: ReceiverProcess,
) -> None:
    pid = receiver.process.pid
    assert one_real_push(receiver.base).text == "success"
    time.sleep(0.5)  # written: the database's files are open
    before = open_fds(pid)
    slow = [connect(receiver.base) for _ in range(300)]  # more than the fd limit allows
    for n, sock in enumerate(slow):
        if n % 3:  # a third send nothing at all, the rest a request head that never ends
            sock.sendall(b"POST /wechat/callback HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    during = open_fds(pid)
    answer = one_real_push(receiver.base)
    started = time.monotonic()
    closed = sum(closed_by_server(sock, within=3) for sock in slow)
    took = time.monotonic() - started
    time.sleep(0.3)
    after = open_fds(pid)
    for sock in slow:
        sock.close()
    print(
        f"\nfds: {before} before, {during} with 300 slow connections (limit {FD_LIMIT}, "
        f"cap {MAX_CONNECTIONS}), {after} after; real push: {answer.status_code} "
        f"{answer.text!r}; {closed} of 300 closed within {took:.1f} s"
    )
    assert answer.status_code == 200 and answer.text == "success"
    assert during <= before + MAX_CONNECTIONS + 5, "the cap, and a few for the database"
    assert closed == 300
    assert after <= before + 2


@pytest.mark.process
def test_a_trickled_body_is_closed_after_the_body_timeout(receiver: ReceiverProcess) -> None:
    query, body = build("plaintext", 1, first_msgid=time.time_ns())[0]
    target = "/wechat/callback?" + "&".join(f"{k}={v}" for k, v in query.items())
    start = len(receiver.output())
    sock = connect(receiver.base)
    sock.sendall(
        f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    started = time.monotonic()
    assert closed_by_server(sock, within=4)
    print(
        f"\nbody stalled after 10 of {len(body)} bytes: "
        f"closed after {time.monotonic() - started:.1f} s"
    )
    sock.close()
    time.sleep(0.2)
    assert "Traceback" not in receiver.output()[start:], "a cut-off body is no app error"


@pytest.mark.process
def test_an_idle_keep_alive_connection_is_closed(receiver: ReceiverProcess) -> None:
    sock = connect(receiver.base)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert closed_by_server(sock, within=4)
    print(f"\nidle keep-alive connection closed after {time.monotonic() - started:.1f} s")
    sock.close()


@pytest.mark.process
@pytest.mark.parametrize("length", [33, 6 * 1024])
def test_long_nonces_are_refused(receiver: ReceiverProcess, length: int) -> None:
    answer = push(receiver.base, "7" * length, msgid=time.time_ns())
    print(f"\nnonce of {length} characters: {answer.status_code} {answer.text!r}")
    assert answer.status_code in (400, 403)
    longest = str(time.time_ns()).rjust(32, "7")
    assert push(receiver.base, longest, msgid=time.time_ns()).text == "success"


@pytest.mark.process
def test_the_nonce_cache_forgets_the_oldest_beyond_its_bound(receiver: ReceiverProcess) -> None:
    def refused_by_the_database() -> int:
        return int(httpx.get(f"{receiver.base}/health", timeout=5).json()["replays"])

    stamp = str(int(time.time()))
    first = push(receiver.base, "100001", msgid=time.time_ns(), stamp=stamp)
    assert first.text == "success"
    before = refused_by_the_database()
    assert push(receiver.base, "100001", msgid=time.time_ns(), stamp=stamp).status_code == 409
    assert refused_by_the_database() == before, "refused by the process's cache"
    for n in range(NONCE_CACHE + 10):
        assert push(receiver.base, f"2{n:05d}", msgid=time.time_ns()).text == "success"
    # Forgotten by the cache, which holds at most NONCE_CACHE pairs; the database's replay
    # memory (callback_nonces) still refuses it.
    assert push(receiver.base, "100001", msgid=time.time_ns(), stamp=stamp).status_code == 409
    assert refused_by_the_database() == before + 1


def test_nonce_cache_memory_is_bounded() -> None:
    window = 300
    cache = NonceCache(window, max_entries=100_000)
    tracemalloc.start()
    for n in range(200_000):
        cache.first_time("1732780000", f"{n:010d}", now=0.0)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\n200,000 distinct nonces: {len(cache)} kept, {current / MiB:.1f} MiB")
    assert len(cache) <= 100_000
    assert current < 16 * MiB
    with pytest.raises(NonceRefused):
        cache.first_time("1732780000", "7" * 6 * 1024, now=0.0)


def test_the_nonce_cache_remembers_a_pair_for_two_windows() -> None:
    cache = NonceCache(10, max_entries=1000)
    assert cache.first_time("1732780000", "1", now=0.0)
    for now in (10.5, 20.5):  # the window passes twice, each time with other pushes
        assert cache.first_time("1732780000", f"other{now}", now=now)
        assert not cache.first_time("1732780000", "1", now=now), "still a replay"
    assert cache.first_time("1732780000", "other", now=31.0)  # a third rotation
    assert cache.first_time("1732780000", "1", now=31.0), "forgotten after it"


@pytest.mark.process
@pytest.mark.parametrize(("soft", "hard", "cap"), [(200, 200, 136), (200, 4096, 1000)])
def test_the_connection_cap_fits_the_descriptor_limit(soft: int, hard: int, cap: int) -> None:
    """Raised to fit when the hard limit allows, else a smaller cap (in a child process:
    the limit is per process)."""
    code = (
        "import resource; from receiver.server import fit_fd_limit; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "print(fit_fd_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    print(f"\nfd limit {soft}/{hard}, --max-connections 1000: cap, soft limit = {out.stdout}")
    assert int(out.stdout.split()[0]) == cap
    assert int(out.stdout.split()[1]) >= cap + 64


def _record(message: str = "Refused a callback (%d): %s") -> logging.LogRecord:
    return logging.LogRecord(
        "wxpush.receiver", logging.WARNING, __file__, 1, message, (403, "x"), None
    )


def test_the_log_limit_counts_what_it_suppresses() -> None:
    now = [0.0]
    limiter = RateLimitFilter(burst=2, interval=10, clock=lambda: now[0])
    assert [limiter.filter(_record()) for _ in range(5)] == [True, True, False, False, False]
    assert limiter.filter(_record("Another reason")), "each reason has its own budget"
    now[0] = 10.0
    first = _record()
    assert limiter.filter(first)
    assert "3 more like this suppressed in the last 10 s" in first.getMessage()
    assert limiter.filter(_record()) and not limiter.filter(_record())


def _lines(output: str, pattern: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(pattern, line)]


@pytest.mark.process
def test_refusal_warnings_are_rate_limited(receiver: ReceiverProcess) -> None:
    start = len(receiver.output())
    stamp = str(int(time.time()))
    with httpx.Client(base_url=receiver.base, timeout=10) as client:
        for n in range(300):
            query = {"signature": "0" * 40, "timestamp": stamp, "nonce": str(n)}
            assert (
                client.post("/wechat/callback", params=query, content=b"<xml/>").status_code == 403
            )
        time.sleep(1.2)  # the interval passes; the next refusal reports the suppressed ones
        client.post(
            "/wechat/callback", params={"signature": "0" * 40, "timestamp": stamp, "nonce": "x"}
        )
    wait_until(
        lambda: _lines(receiver.output()[start:], r"more like this suppressed"),
        "the receiver logged the suppressed refusals",
    )
    log = receiver.output()[start:]
    refused = _lines(log, r"Refused a callback")
    summary = _lines(log, r"Refused a callback.*more like this suppressed")
    print(
        f"\n301 refused requests wrote {len(log.encode())} bytes, {len(refused)} lines: {summary}"
    )
    # Each 1 s interval logs at most BURST refusals, then one line counting the rest. The 301
    # requests take one interval on an idle machine (5 lines + "295 more"); on a loaded one
    # (the suite's first minute, three Prefect servers starting) they spill into a second.
    suppressed = sum(
        int(re.findall(r"(\d+) more like this suppressed", line)[0]) for line in summary
    )
    assert len(refused) + suppressed == 301, "every refusal is logged or counted"
    assert len(refused) <= (BURST + 1) * len(summary), "at most BURST lines an interval"
    assert suppressed >= 250, "the burst was suppressed, not logged"


@pytest.mark.process
def test_no_api_docs_are_served(receiver: ReceiverProcess) -> None:
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(f"{receiver.base}{path}", timeout=5).status_code == 404, path
