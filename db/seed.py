"""Sample recipients for demos, tests and benchmarks: `seed_recipients()` (SQL only; the
simulator registration lives in cli/seed.py and receives each chunk through `on_chunk`).

The data looks like a real account's: 28-character openids sharing an app prefix, Chinese and
Latin nicknames (some too long for a `thing` field), cities, interaction ages spread over
0-10 days with most recent (about 30% older than 48 h), about 3% unsubscribed, 1% blocked
(blacklist / refuse), 1% who never interacted, JSON attributes a template can use
(vip_level, last_order_id, last_order_goods, last_order_amount, waybill), and a few
`interactions` rows per recipient whose latest is `last_interaction_at`.

Deterministic per (app_id, seed): the same call yields the same openids, so running it
again updates the rows in place (ages are recomputed from `now`) instead of adding new ones.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.orm import Session

from db.models import Base, interactions, recipients
from db.types import sqlite_text, utcnow

Executor = Connection | Session

UNSUBSCRIBED_SHARE = 0.03
BLOCKED_SHARE = 0.01
NEVER_INTERACTED_SHARE = 0.01
LONG_NAME_SHARE = 0.05
MEAN_AGE_HOURS = 40.0  # truncated exponential: P(age > 48 h) ≈ 30%
MAX_AGE_HOURS = 240.0  # 10 days
THING_MAX_CHARS = 20

# fmt: off
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓"
    "曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢"
)
_GIVEN = (
    "伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟",
    "涛", "明", "超", "秀兰", "霞", "平", "刚", "桂英", "子涵", "欣怡", "梓萱", "浩然", "宇轩",
    "一诺", "思远", "雨桐", "佳怡", "俊杰", "诗涵", "博文", "晨曦", "若曦", "天佑", "嘉怡",
)
_STYLED = (
    "小{s}同学", "快乐的鱼", "晴天☀️", "追风少年", "一杯清茶", "🍀幸运草", "阿{s}", "{s}老师",
    "慢慢来", "夏天的风", "柠檬不酸", "🐱喵星人", "岁月静好", "北方的狼", "吃货一枚",
)
_LATIN = (
    "Alice", "Kevin", "Momo", "Lucky☆", "Jason_Li", "Coco", "Vivian", "Leo", "Tony", "Annie",
    "Sunny", "Eric", "Grace", "Kevin_Zhang", "Mia", "Zoe", "Jack_W", "Lily", "Sam", "Emma",
)
_LONG_NAMES = (  # all longer than a `thing` field's 20 characters
    "小红书同款好物分享达人的快乐生活日常记录本",
    "每天都要开开心心的小仙女今天也要加油鸭哈哈",
    "Alexandra Christina Montgomery-Wu",
    "Maximilian Alexander von Hohenberg",
    "🌸春风十里不如你🌸温柔了岁月也惊艳了时光🌸",
    "专业代购正品保证欢迎咨询微信同号二十四小时在线",
)
_CITIES = (
    "北京", "上海", "广州", "深圳", "杭州", "成都", "重庆", "武汉", "西安", "南京", "苏州", "天津",
    "长沙", "郑州", "青岛", "厦门", "昆明", "大连", "宁波", "合肥", "Hong Kong", "Singapore",
)
# fmt: on
_GOODS = (
    "无线蓝牙耳机",
    "保温杯 500ml",
    "儿童绘本套装",
    "有机绿茶礼盒",
    "运动跑鞋 42码",
    "智能手环",
    "空气炸锅",
    "机械键盘",
    "羊毛围巾",
    "护手霜三支装",
    "进口红酒双支礼盒装赠送开瓶器和醒酒器以及精美手提袋",  # > 20 characters
)
_KINDS = ("message", "click_menu", "view_article", "scan", "subscribe")


@dataclass(frozen=True, slots=True)
class SeedRecipient:
    """One generated follower (the same values go to the database and to the simulator)."""

    openid: str
    subscribed: bool
    blocked: str | None
    last_interaction_at: datetime | None
    nickname: str
    city: str | None
    attributes: dict[str, Any]
    interactions: tuple[tuple[str, datetime], ...]


@dataclass
class SeedResult:
    """What `seed_recipients` wrote, and the mix it generated."""

    app_id: str
    recipients: int
    created: int
    updated: int
    interactions: int
    replaced: int
    seconds: float
    mix: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A human-readable summary."""
        total = max(self.recipients, 1)
        out = [
            f"app {self.app_id}: {self.recipients:,} recipients ({self.created:,} new, "
            f"{self.updated:,} updated), {self.interactions:,} interactions "
            f"in {self.seconds:.1f} s"
        ]
        if self.replaced:
            out.append(f"  replaced {self.replaced:,} earlier recipients of the app")
        for name, n in self.mix.items():
            out.append(f"  {name}: {n:,} ({100 * n / total:.1f}%)")
        return out


def app_prefix(app_id: str) -> str:
    """The 5 characters after the `o` that every openid of this app shares (as on WeChat)."""
    digest = hashlib.sha256(app_id.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:5]


def generate_recipients(
    *, app_id: str, count: int, seed: int = 42, now: datetime
) -> Iterator[SeedRecipient]:
    """`count` followers, deterministic for (app_id, seed, now)."""
    rng = random.Random(f"wxpush-seed:{app_id}:{seed}")
    prefix = "o" + app_prefix(app_id)
    age_scale = 1 - math.exp(-MAX_AGE_HOURS / MEAN_AGE_HOURS)
    now = now.replace(microsecond=0)
    random_ = rng.random
    for _ in range(count):
        tail = base64.urlsafe_b64encode(rng.getrandbits(132).to_bytes(17, "big")).decode()
        roll = random_()
        subscribed = roll >= UNSUBSCRIBED_SHARE
        blocked = None
        if subscribed and roll < UNSUBSCRIBED_SHARE + BLOCKED_SHARE:
            blocked = "blacklist" if random_() < 0.5 else "refuse"
        last: datetime | None = None
        events: list[tuple[str, datetime]] = []
        if random_() >= NEVER_INTERACTED_SHARE:
            seconds = -MEAN_AGE_HOURS * 3600 * math.log(1 - random_() * age_scale)
            last = at = now - timedelta(seconds=int(seconds))
            events.append((_KINDS[int(random_() * len(_KINDS))], last))
            for _ in range(int(random_() * 4)):
                at -= timedelta(seconds=int(3600 + random_() * 3600 * 24 * 7))
                events.append((_KINDS[int(random_() * len(_KINDS))], at))
        yield SeedRecipient(
            openid=prefix + tail[:22],
            subscribed=subscribed,
            blocked=blocked,
            last_interaction_at=last,
            nickname=_nickname(rng),
            city=_CITIES[int(random_() * len(_CITIES))] if random_() > 0.05 else None,
            attributes=_attributes(rng, now),
            interactions=tuple(events),
        )


def _nickname(rng: random.Random) -> str:
    roll = rng.random()
    if roll < LONG_NAME_SHARE:
        return rng.choice(_LONG_NAMES)
    surname = rng.choice(_SURNAMES)
    if roll < 0.55:
        return surname + rng.choice(_GIVEN)
    if roll < 0.75:
        return rng.choice(_STYLED).format(s=surname)
    return rng.choice(_LATIN).replace("_", " " if rng.random() < 0.5 else "_")


_VIP_WEIGHTS = tuple(itertools.accumulate((40, 25, 15, 10, 6, 4)))


def _attributes(rng: random.Random, now: datetime) -> dict[str, Any]:
    ordered = now - timedelta(days=int(rng.random() * 60))
    return {
        "vip_level": bisect.bisect(_VIP_WEIGHTS, rng.random() * _VIP_WEIGHTS[-1]),
        "last_order_id": f"SO{ordered.year}{ordered.month:02d}{ordered.day:02d}"
        f"{int(rng.random() * 10**6):06d}",
        "last_order_goods": _GOODS[int(rng.random() * len(_GOODS))],
        "last_order_amount": f"¥{int(990 + rng.random() * 98_910) / 100:.2f}",
        "waybill": f"SF{int(10**12 + rng.random() * 9 * 10**12)}",
    }


# -- writing ----------------------------------------------------------------------------------
# Seeding skips SQLAlchemy's per-value type processing (most of the time at 100k+ rows): the
# rows go to the driver's executemany as tuples, converted here exactly as UTCDateTime and
# JSON would convert them. SQLite gets wxpush's canonical UTC text; PostgreSQL aware datetimes.

_RECIPIENT_COLUMNS = (
    "app_id",
    "openid",
    "subscribed",
    "blocked",
    "last_interaction_at",
    "nickname",
    "city",
    "attributes",
    "created_at",
    "updated_at",
)
_UPDATED_ON_RESEED = (
    "subscribed",
    "blocked",
    "last_interaction_at",
    "nickname",
    "city",
    "attributes",
    "updated_at",
)


_PG_ARRAY_TYPES = {
    "app_id": "text",
    "openid": "text",
    "subscribed": "boolean",
    "blocked": "text",
    "last_interaction_at": "timestamptz",
    "nickname": "text",
    "city": "text",
    "attributes": "jsonb",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}


def _statements(dialect: str) -> tuple[str, str, str]:
    """(upsert recipients, forget interactions, insert interactions) for the driver.

    SQLite: one row per parameter set (executemany; in-process, fast). PostgreSQL: one
    statement per chunk with a column array each (`unnest`), ~5x faster than a pipelined
    executemany of single rows; `%b` sends the arrays in binary, which spares psycopg from
    quoting every JSON text into an array literal (that quoting was 80% of the time).
    """
    on_conflict = "ON CONFLICT (app_id, openid) DO UPDATE SET " + ", ".join(
        f"{name} = excluded.{name}" for name in _UPDATED_ON_RESEED
    )
    columns = ", ".join(_RECIPIENT_COLUMNS)
    if dialect == "sqlite":
        marks = ", ".join("?" for _ in _RECIPIENT_COLUMNS)
        return (
            f"INSERT INTO recipients ({columns}) VALUES ({marks}) {on_conflict}",
            "DELETE FROM interactions WHERE app_id = ? AND openid = ?",
            "INSERT INTO interactions (app_id, openid, kind, occurred_at) VALUES (?, ?, ?, ?)",
        )
    arrays = ", ".join(f"%b::{_PG_ARRAY_TYPES[name]}[]" for name in _RECIPIENT_COLUMNS)
    return (
        f"INSERT INTO recipients ({columns}) SELECT * FROM unnest({arrays}) {on_conflict}",
        "DELETE FROM interactions WHERE app_id = %b AND openid = ANY(%b::text[])",
        "INSERT INTO interactions (app_id, openid, kind, occurred_at) "
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[])",
    )


def _execute_rows(connection: Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Run `sql` for every row: executemany on SQLite, one call with column arrays on PG."""
    if not rows:
        return
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(sql, rows)
    else:
        connection.exec_driver_sql(sql, tuple(list(column) for column in zip(*rows, strict=True)))


def _stamp(dialect: str) -> Callable[[datetime | None], Any]:
    if dialect == "sqlite":
        return lambda value: None if value is None else sqlite_text(value)
    return lambda value: value


def _count(executor: Executor, app_id: str) -> int:
    query = select(func.count()).select_from(recipients).where(recipients.c.app_id == app_id)
    return int(executor.execute(query).scalar_one())


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


#: The tables `seed_recipients` loads, analyzed when it is done.
SEEDED_TABLES = ("recipients", "interactions")


def analyze(executor: Executor, tables: Sequence[str] = SEEDED_TABLES) -> None:
    """Refresh the planner's statistics of `tables` after a bulk load, in the caller's
    transaction. Without them PostgreSQL plans the next statements for the table as it was
    (113k fresh recipients were estimated at 161 rows, issue 15) until autovacuum gets to
    it; SQLite has no statistics until the first ANALYZE."""
    known = set(Base.metadata.tables)
    for name in tables:
        if name not in known:
            raise ValueError(f"{name!r} is not a wxpush table")
        _connection(executor).exec_driver_sql(f"ANALYZE {name}")


def seed_recipients(
    executor: Executor,
    *,
    app_id: str,
    count: int,
    seed: int = 42,
    now: datetime | None = None,
    replace: bool = False,
    chunk_size: int = 5_000,
    on_chunk: Callable[[Sequence[SeedRecipient]], None] | None = None,
) -> SeedResult:
    """Write `count` generated recipients (and their interactions) for `app_id`.

    Upserts by (app_id, openid), so a second run with the same seed changes rows in place
    and regenerates their interactions; `replace` first deletes every recipient and
    interaction of the app. `on_chunk` sees each chunk after it was written (cli/seed.py
    registers them in the simulator). Ends with `analyze` of both tables. Does not commit.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    started = time.perf_counter()
    now = now or utcnow()
    connection = _connection(executor)
    dialect = connection.dialect.name
    replaced = 0
    if replace:
        connection.execute(delete(interactions).where(interactions.c.app_id == app_id))
        replaced = connection.execute(
            delete(recipients).where(recipients.c.app_id == app_id)
        ).rowcount  # type: ignore[attr-defined]
    before = _count(connection, app_id)
    upsert, forget, insert_event = _statements(dialect)
    stamp = _stamp(dialect)
    created_at = stamp(now)
    mix = dict.fromkeys(
        ("unsubscribed", "blocked", "never interacted", "outside 48 h", "nickname > 20 chars"), 0
    )
    written_events = 0
    chunk: list[SeedRecipient] = []

    def flush() -> None:
        nonlocal written_events
        rows = [
            (
                app_id,
                r.openid,
                r.subscribed,
                r.blocked,
                stamp(r.last_interaction_at),
                r.nickname,
                r.city,
                json.dumps(r.attributes, ensure_ascii=False),
                created_at,
                created_at,
            )
            for r in chunk
        ]
        _execute_rows(connection, upsert, rows)
        if before and dialect == "sqlite":  # an earlier run's interactions are regenerated
            connection.exec_driver_sql(forget, [(app_id, r.openid) for r in chunk])
        elif before:
            connection.exec_driver_sql(forget, (app_id, [r.openid for r in chunk]))
        events = [(app_id, r.openid, kind, stamp(at)) for r in chunk for kind, at in r.interactions]
        _execute_rows(connection, insert_event, events)
        written_events += len(events)
        if on_chunk is not None:
            on_chunk(chunk)

    window_start = now - timedelta(hours=48)
    for recipient in generate_recipients(app_id=app_id, count=count, seed=seed, now=now):
        mix["unsubscribed"] += not recipient.subscribed
        mix["blocked"] += recipient.blocked is not None
        last = recipient.last_interaction_at
        mix["never interacted"] += last is None
        mix["outside 48 h"] += last is None or last < window_start
        mix["nickname > 20 chars"] += len(recipient.nickname) > THING_MAX_CHARS
        chunk.append(recipient)
        if len(chunk) >= chunk_size:
            flush()
            chunk = []
    if chunk:
        flush()
    analyze(connection)
    created = _count(connection, app_id) - before
    return SeedResult(
        app_id=app_id,
        recipients=count,
        created=created,
        updated=count - created,
        interactions=written_events,
        replaced=replaced,
        seconds=time.perf_counter() - started,
        mix=mix,
    )
