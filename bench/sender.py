"""The send engine (`sending.sender.send_rows`) against bare loops, on one simulator.

    .venv/bin/python -m bench.sender [--messages 20000] [--concurrency 16 32 64]
        [--rounds 3] [--rates 50 200] [--rate-seconds 4] [--micro]

Starts `python -m wechat.simulator`, registers the followers, fetches a stable token, then
for each concurrency runs, interleaved over `--rounds` rounds (the median is printed):

- `raw httpx+aiohttp`: `--concurrency` workers POSTing pre-built JSON bytes through an
  `httpx.AsyncClient` with the aiohttp transport (a hand-written loop on this HTTP stack; not
  a ceiling: `WeChatClient` hands its requests to the transport directly, skipping
  `AsyncClient`'s machinery, so `bare client` usually beats it);
- `bare client`: the same workers calling `WeChatClient.send_template` with pre-built
  `TemplateMessage`s (what the engine costs on top of the client is the next row minus this);
- `engine`: `send_rows` on audience rows: render + field rules + client_msg_id + limiter
  check + per-errcode handling + one `DeliveryOutcome` per row.

Every run uses fresh openids (no dedupe hits) and checks that the simulator accepted
exactly what was answered errcode 0. `--rates` then measures achieved vs configured rate
(engine, limiter on). `--micro` prints per-row CPU costs without HTTP: rendering, the client's
own cost per send (a stub transport that answers at once), and the worker-pool vs semaphore
scheduling cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from sending.message import MessageSpec, client_msg_id_for, format_value, render
from sending.ratelimit import RateLimiter
from sending.sender import RetryPolicy, TokenSource, send_rows
from wechat.client import WeChatClient
from wechat.models import TemplateMessage
from wechat.simulator.defaults import DEMO_TEMPLATE_ID
from wechat.simulator.process import SimulatorProcess, start_simulator

SPEC = MessageSpec(
    template_id=DEMO_TEMPLATE_ID,
    data={
        "thing1": "{goods}",
        "character_string2": "{waybill}",
        "time3": "{shipped_at}",
        "amount4": "¥{amount}",
    },
    url="https://shop.example/orders/{waybill}",
)
SHIPPED = datetime(2024, 5, 1, 2, 30, tzinfo=UTC)


GOODS = [
    f"{name}{size}"
    for name in ("无线降噪耳机", "机械键盘", "保温杯", "运动鞋", "台灯")
    for size in ("", "·小", "·中", "·大", "·礼盒", "·套装", "·限量", "·经典", "·青春", "·旗舰")
]


def rows_for(tag: str, n: int) -> list[dict[str, Any]]:
    """Audience rows as SQL would return them: 50 products, ~1,000 amounts, one minute of
    the day each, a unique waybill per row."""
    return [
        {
            "openid": f"o{tag}{i:07d}",
            "goods": GOODS[i % len(GOODS)],
            "waybill": f"SF{i:010d}",
            "shipped_at": SHIPPED + timedelta(minutes=i % 1440),
            "amount": f"{i % 997 + 1}.00",
        }
        for i in range(n)
    ]


def wire(row: dict[str, Any], campaign: str) -> dict[str, Any]:
    """What a hand-written loop would build from a row: WeChat's JSON, no field rules."""
    return {
        "touser": row["openid"],
        "template_id": DEMO_TEMPLATE_ID,
        "url": f"https://shop.example/orders/{row['waybill']}",
        "client_msg_id": client_msg_id_for(campaign, row["openid"]),
        "data": {
            "thing1": {"value": row["goods"]},
            "character_string2": {"value": row["waybill"]},
            "time3": {"value": format_value(row["shipped_at"])},
            "amount4": {"value": f"¥{row['amount']}"},
        },
    }


async def workers(n: int, items: list[Any], one: Callable[[Any], Awaitable[bool]]) -> int:
    """`n` coroutines over one iterator; returns how many answered errcode 0."""
    shared = iter(items)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for item in shared:
            if await one(item):
                ok += 1

    await asyncio.gather(*(worker() for _ in range(n)))
    return ok


async def raw_loop(
    base_url: str, token: str, campaign: str, rows: list[dict[str, Any]], concurrency: int
) -> int:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    url = f"{base_url}/cgi-bin/message/template/send?access_token={token}"
    headers = {"content-type": "application/json; charset=utf-8"}
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits)) as http:

        async def one(row: dict[str, Any]) -> bool:
            body = orjson.dumps(wire(row, campaign))
            response = await http.post(url, content=body, headers=headers)
            return orjson.loads(response.content).get("errcode", 0) == 0

        return await workers(concurrency, rows, one)


async def bare_client(
    base_url: str, token: str, campaign: str, rows: list[dict[str, Any]], concurrency: int
) -> int:
    async with WeChatClient(base_url, max_connections=concurrency) as client:

        async def one(row: dict[str, Any]) -> bool:
            body = wire(row, campaign)
            message = TemplateMessage(
                touser=body["touser"],
                template_id=body["template_id"],
                url=body["url"],
                client_msg_id=body["client_msg_id"],
                data={key: value["value"] for key, value in body["data"].items()},
            )
            await client.send_template(token, message)
            return True

        return await workers(concurrency, rows, one)


async def engine(
    base_url: str,
    token: str,
    campaign: str,
    rows: list[dict[str, Any]],
    concurrency: int,
    limiter: RateLimiter | None = None,
) -> int:
    async def no_refresh(failed: SecretStr) -> SecretStr:
        raise RuntimeError("the benchmark never rotates tokens")

    async with WeChatClient(base_url, max_connections=concurrency) as client:
        result = await send_rows(
            rows,
            spec=SPEC,
            campaign_id=campaign,
            client=client,
            token=TokenSource(token, no_refresh),
            limiter=limiter,
            concurrency=concurrency,
            retry=RetryPolicy(),
        )
    return result.counts["sent"]


def stable_token(sim: SimulatorProcess) -> str:
    answer = httpx.post(
        f"{sim.base_url}/cgi-bin/stable_token",
        json={"grant_type": "client_credential", "appid": sim.app_id, "secret": sim.app_secret},
    ).json()
    return str(answer["access_token"])


@dataclass
class Figure:
    rate: float  # sends/s, wall clock
    cpu_us: float  # this process's CPU per send, µs (less sensitive to a busy machine)


def timed(sim: SimulatorProcess, n: int, coro: Awaitable[int]) -> Figure:
    before = sim.admin.counters().accepted
    cpu = time.process_time()
    started = time.perf_counter()
    ok = asyncio.run(coro)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    accepted = sim.admin.counters().accepted - before
    if not ok == accepted == n:
        raise SystemExit(f"expected {n} accepted, got ok={ok} accepted={accepted}")
    return Figure(n / seconds, cpu / n * 1e6)


STACKS = ("raw", "bare", "engine")


def bench_throughput(sim: SimulatorProcess, token: str, args: argparse.Namespace) -> None:
    print(
        f"\n{args.messages:,} template sends per run, median of {args.rounds} interleaved "
        "rounds: sends/s (client CPU µs per send)"
    )
    print(
        f"{'in flight':>9} {'raw httpx+aiohttp':>20} {'bare client':>18} {'engine':>18} "
        f"{'engine/raw':>10} {'engine/bare':>11}"
    )
    for concurrency in args.concurrency:
        figures: dict[str, list[Figure]] = {name: [] for name in STACKS}
        for r in range(args.rounds):
            for name in STACKS:
                tag = f"{name}{concurrency}x{r}"
                rows = rows_for(tag, args.messages)
                sim.admin.add_followers({"openid": row["openid"]} for row in rows)
                campaign = f"bench-{tag}"
                if name == "raw":
                    coro = raw_loop(sim.base_url, token, campaign, rows, concurrency)
                elif name == "bare":
                    coro = bare_client(sim.base_url, token, campaign, rows, concurrency)
                else:
                    coro = engine(sim.base_url, token, campaign, rows, concurrency)
                figures[name].append(timed(sim, args.messages, coro))
            sim.admin.reset()  # keep the simulator's message log small between rounds
            token = stable_token(sim)
        med = {
            name: Figure(
                statistics.median(f.rate for f in figures[name]),
                statistics.median(f.cpu_us for f in figures[name]),
            )
            for name in STACKS
        }
        cells = " ".join(f"{med[n].rate:>10,.0f} ({med[n].cpu_us:>4.0f} µs)" for n in STACKS)
        print(
            f"{concurrency:>9} {cells} {med['engine'].rate / med['raw'].rate:>10.0%} "
            f"{med['engine'].rate / med['bare'].rate:>11.0%}"
        )


def bench_rates(sim: SimulatorProcess, args: argparse.Namespace) -> None:
    print(
        f"\nachieved vs configured rate (engine, limiter on, 16 in flight, {args.rate_seconds:g} s)"
    )
    for rate in args.rates:
        n = int(rate * args.rate_seconds) + 1
        token = stable_token(sim)
        rows = rows_for(f"rate{rate}", n)
        sim.admin.add_followers({"openid": row["openid"]} for row in rows)
        started = time.perf_counter()
        asyncio.run(engine(sim.base_url, token, f"bench-rate-{rate}", rows, 16, RateLimiter(rate)))
        seconds = time.perf_counter() - started
        achieved = (n - 1) / seconds  # n sends span n-1 intervals
        print(
            f"  configured {rate:>6g}/s  achieved {achieved:>8.1f}/s  ({achieved / rate - 1:+.1%})"
        )


ANSWER = b'{"errcode":0,"errmsg":"ok","msgid":3662956322040938501}'
ANSWER_HEADERS = [
    (b"Content-Type", b"application/json; charset=utf-8"),
    (b"Content-Length", str(len(ANSWER)).encode()),
    (b"Date", b"Sat, 28 Nov 2026 14:00:00 GMT"),
    (b"Server", b"Python/3.11 aiohttp/3.14.5"),
]


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield ANSWER


class StubTransport(httpx.AsyncBaseTransport):
    """Answers at once with a streamed body, as AiohttpTransport hands one back: what is left
    is the client's own CPU per send (request, read, parse, errors), without HTTP or aiohttp."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers=ANSWER_HEADERS,
            stream=_Body(),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": b"OK"},
        )


async def stub_sends(messages: list[TemplateMessage]) -> None:
    token = "t" * 136  # as long as a real access_token
    async with WeChatClient("http://127.0.0.1:1", transport=StubTransport()) as client:
        for message in messages:
            await client.send_template(token, message)


def bench_micro(n: int = 20_000) -> None:
    print(f"\nper-row CPU, no HTTP ({n:,} rows, µs each)")
    rows = rows_for("micro", n)

    def per(label: str, fn: Callable[[], object]) -> None:
        started = time.process_time()  # CPU, not wall: the box is shared
        fn()
        print(f"  {label:<48} {(time.process_time() - started) / n * 1e6:7.2f}")

    per(
        "render (fill + field rules + TemplateMessage)",
        lambda: [render(SPEC, r, client_msg_id="x") for r in rows],
    )
    per("client_msg_id_for", lambda: [client_msg_id_for("c", r["openid"]) for r in rows])
    data = {
        "thing1": "无线降噪耳机",
        "character_string2": "SF0000000001",
        "time3": "2024-05-01 10:30",
        "amount4": "¥299.00",
    }
    per(
        "TemplateMessage(...) validated",
        lambda: [
            TemplateMessage(
                touser=r["openid"], template_id="t", data=data, url="u", client_msg_id="x"
            )
            for r in rows
        ],
    )
    per(
        "TemplateMessage.model_construct(...)",
        lambda: [
            TemplateMessage.model_construct(
                touser=r["openid"],
                template_id="t",
                data=data,
                url="u",
                miniprogram=None,
                client_msg_id="x",
            )
            for r in rows
        ],
    )

    messages = [
        TemplateMessage.model_construct(
            touser=r["openid"],
            template_id=DEMO_TEMPLATE_ID,
            data=data,
            url=f"https://shop.example/orders/{r['waybill']}",
            miniprogram=None,
            client_msg_id=client_msg_id_for("c", r["openid"]),
        )
        for r in rows
    ]
    per(
        "WeChatClient.send_template, stub transport",
        lambda: asyncio.run(stub_sends(messages)),
    )

    async def nothing(_: object) -> bool:
        await asyncio.sleep(0)
        return True

    async def pool() -> None:
        await workers(32, rows, nothing)

    async def semaphore() -> None:
        gate = asyncio.Semaphore(32)

        async def one(item: object) -> bool:
            async with gate:
                return await nothing(item)

        await asyncio.gather(*(one(r) for r in rows))

    per("schedule: 32 workers over one iterator", lambda: asyncio.run(pool()))
    per("schedule: one task per row + Semaphore(32)", lambda: asyncio.run(semaphore()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="*", default=[50, 200])
    parser.add_argument("--rate-seconds", type=float, default=4.0)
    parser.add_argument("--micro", action="store_true")
    args = parser.parse_args()
    if args.micro:
        bench_micro()
    with start_simulator() as sim:
        sim.admin.set_config(daily_quota=10**9)
        token = stable_token(sim)
        if args.messages:
            bench_throughput(sim, token, args)
        if args.rates:
            bench_rates(sim, args)


if __name__ == "__main__":
    main()
