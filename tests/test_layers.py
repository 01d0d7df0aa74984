"""The layer table holds for every module of every package, new ones included.

| package      | may import (this repository)                    | never imports                |
|--------------|-------------------------------------------------|------------------------------|
| `config/`    | —                                               | prefect, sqlalchemy, httpx,  |
|              |                                                 | typer                        |
| `processes/` | —                                               | prefect, sqlalchemy,         |
|              |                                                 | alembic, psycopg, typer      |
| `wechat/`    | config, processes                               | prefect, sqlalchemy,         |
|              |                                                 | alembic, psycopg             |
| `db/`        | config                                          | prefect, httpx,              |
|              |                                                 | httpx_aiohttp, aiohttp       |
| `sending/`   | config, wechat; of db/ only `db.outcomes`       | prefect, sqlalchemy,         |
|              | (the ledger's words, no SQLAlchemy)             | alembic, psycopg             |
| `tasks/`     | config, processes, wechat, db                   |                              |
| `flows/`     | config, processes, tasks, wechat, db            |                              |
| `receiver/`  | config, processes, wechat, db                   | prefect                      |
| `api/`       | config, processes, tasks, wechat, db            |                              |
| `cli/`       | config, processes, flows, tasks, receiver, api, |                              |
|              | wechat, db                                      |                              |
| `bench/`     | config, processes, cli, flows, tasks, receiver, |                              |
|              | api, wechat, db                                 |                              |

`tasks/`, `flows/`, `api/`, `cli/` and `bench/` may also import `sending/`, the send engine; it
reaches no database code but the ledger's words, through anything it imports either.

`processes/` starts, waits for and stops child processes (the simulator, the CLI's services,
the benches'); it imports nothing of this repository. No package imports `tests`. The send
engine (`PREFECT_FREE`) never reaches Prefect, through anything it imports here either.
Checked on the source with `ast`, imports inside functions and under `TYPE_CHECKING` included:
a lazy import is no way around a layer, and every module under a package directory is walked,
so a new one is covered the day it is added.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import wechat

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"__pycache__"}


@dataclass(frozen=True)
class Layer:
    """What one package may import from this repository, and what it never imports."""

    may_import: frozenset[str]
    never: frozenset[str] = frozenset()
    #: Single modules of a package the layer may not import otherwise.
    also: frozenset[str] = frozenset()


#: The settings (config/) sit under everything: any package may read them.
_C = "config"
#: Child processes (processes/): the simulator, the CLI's services and the benches start some.
_P = "processes"
LAYERS: dict[str, Layer] = {
    "config": Layer(frozenset(), frozenset({"prefect", "sqlalchemy", "httpx", "typer"})),
    "processes": Layer(
        frozenset(), frozenset({"prefect", "sqlalchemy", "alembic", "psycopg", "typer"})
    ),
    "wechat": Layer(
        frozenset({_C, _P}), frozenset({"prefect", "sqlalchemy", "alembic", "psycopg"})
    ),
    "db": Layer(frozenset({_C}), frozenset({"prefect", "httpx", "httpx_aiohttp", "aiohttp"})),
    "sending": Layer(
        frozenset({_C, "wechat"}),
        frozenset({"prefect", "sqlalchemy", "alembic", "psycopg"}),
        also=frozenset({"db.outcomes"}),
    ),
    "tasks": Layer(frozenset({"sending", _C, _P, "wechat", "db"})),
    "flows": Layer(frozenset({"sending", _C, _P, "tasks", "wechat", "db"})),
    "receiver": Layer(frozenset({_C, _P, "wechat", "db"}), frozenset({"prefect"})),
    "api": Layer(frozenset({"sending", _C, _P, "tasks", "wechat", "db"})),
    "cli": Layer(
        frozenset({"sending", _C, _P, "flows", "tasks", "receiver", "api", "wechat", "db"})
    ),
    "bench": Layer(
        frozenset(
            {"sending", _C, _P, "cli", "flows", "tasks", "receiver", "api", "wechat", "db"}
        )
    ),
}
#: Our own top-level names: importing one is governed by `may_import`.
OURS = frozenset(LAYERS) | {"tests"}
#: The send engine and the errcode sync the CLI calls: no Prefect, however indirectly.
PREFECT_FREE = (
    "sending.sender",
    "sending.message",
    "sending.ratelimit",
    "sending.plan",
    "tasks.reference",
)
#: What the send engine may reach of the database layer: the ledger's words, no engine.
DATABASE_WORDS = frozenset({"db", "db.outcomes"})
DATABASE = frozenset({"sqlalchemy", "alembic", "psycopg"})


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is written."""

    module: str
    path: Path
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files(package: str, root: Path = ROOT) -> list[Path]:
    return sorted(
        path
        for path in (root / package).rglob("*.py")
        if not SKIP_DIRS.intersection(path.relative_to(root).parts)
    )


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    """Every module `path` imports, anywhere in the file, relative imports made absolute.

    `from a import b` yields `a.b` when that is a module here, else `a` (b is a name in it).
    """
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                is_module = (root / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    root / sub.replace(".", "/") / "__init__.py"
                ).exists()
                found.append(Import(sub if is_module else source, path, node.lineno))
    return found


def violations(package: str, layer: Layer, root: Path = ROOT) -> list[str]:
    """One line per import in `package` that its layer forbids."""
    allowed = layer.may_import | {package}
    bad: list[str] = []
    for path in package_files(package, root):
        for found in imports_of(path, root):
            top = found.module.split(".")[0]
            if (
                top in OURS and top not in allowed and found.module not in layer.also
            ) or top in layer.never:
                where = f"{found.path.relative_to(root)}:{found.line}"
                bad.append(f"{where} imports {found.module} ({package}/ may not)")
    return bad


def file_of(module: str, root: Path = ROOT) -> Path | None:
    base = root / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def reachable(module: str, root: Path = ROOT) -> dict[str, str]:
    """Every module importing `module` can reach (package `__init__`s included), each with
    the module of this repository that imports it."""
    seen: dict[str, str] = {}
    done: set[str] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            prefix = ".".join(parts[:i])
            path = None if prefix in done else file_of(prefix, root)
            done.add(prefix)
            for found in imports_of(path, root) if path else ():
                seen.setdefault(found.module, prefix)
                if found.module.split(".")[0] in OURS and found.module not in done:
                    todo.append(found.module)
    return seen


def test_every_package_has_a_row() -> None:
    """A new top-level package (a folder of Python files) needs its row in LAYERS."""
    folders = {
        folder.name
        for folder in ROOT.iterdir()
        if folder.is_dir()
        and not folder.name.startswith(".")
        and not folder.name.endswith(".egg-info")
        and folder.name not in SKIP_DIRS
        and any(folder.rglob("*.py"))
    }
    assert folders - {"tests"} == set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    assert package_files(package), f"{package}/ has no modules: is the table stale?"
    assert violations(package, LAYERS[package]) == []


@pytest.mark.parametrize("module", PREFECT_FREE)
def test_the_send_engine_never_reaches_prefect(module: str) -> None:
    assert file_of(module) is not None, f"{module} is gone: update PREFECT_FREE"
    reached = reachable(module)
    assert {m: by for m, by in reached.items() if m.split(".")[0] == "prefect"} == {}
    assert {m: by for m, by in reached.items() if m.split(".")[0] in {"flows", "cli"}} == {}


@pytest.mark.parametrize("module", [module_name(p) for p in package_files("sending")])
def test_the_send_engine_never_reaches_the_database(module: str) -> None:
    """Every module of `sending/`, new ones included: no driver, no ORM, of db/ only its words."""
    reached = reachable(module)
    assert {m: by for m, by in reached.items() if m.split(".")[0] in DATABASE} == {}
    db_reached = {m for m in reached if m.split(".")[0] == "db"}
    assert db_reached <= DATABASE_WORDS, db_reached - DATABASE_WORDS
    assert {m: by for m, by in reached.items() if m.split(".")[0] == "prefect"} == {}


def test_the_check_catches_bad_imports(tmp_path: Path) -> None:
    """The rules can fail: lazy, relative and package-init imports are all seen."""
    (tmp_path / "wechat").mkdir()
    (tmp_path / "wechat" / "__init__.py").write_text("")
    (tmp_path / "wechat" / "ok.py").write_text("import httpx\nfrom . import ok\n")
    (tmp_path / "wechat" / "lazy.py").write_text(
        "def f():\n    from prefect import flow\n    import sqlalchemy.orm\n"
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("import prefect\n")
    (tmp_path / "tasks" / "engine.py").write_text("from ..cli import main\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("")
    (tmp_path / "cli" / "main.py").write_text("")

    assert violations("wechat", LAYERS["wechat"], tmp_path) == [
        "wechat/lazy.py:2 imports prefect (wechat/ may not)",
        "wechat/lazy.py:3 imports sqlalchemy.orm (wechat/ may not)",
    ]
    assert violations("tasks", LAYERS["tasks"], tmp_path) == [
        "tasks/engine.py:1 imports cli.main (tasks/ may not)"
    ]
    reached = reachable("tasks.engine", tmp_path)
    assert reached["prefect"] == "tasks" and reached["cli.main"] == "tasks.engine"


def test_the_protocol_package_exports_what_it_imports() -> None:
    """`wechat.__all__` names exactly the public names `wechat/__init__.py` brings in."""
    tree = ast.parse((ROOT / "wechat" / "__init__.py").read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }
    assert sorted(wechat.__all__) == sorted(n for n in imported if not n.startswith("_"))
    assert len(set(wechat.__all__)) == len(wechat.__all__)
    assert all(getattr(wechat, name, None) is not None for name in wechat.__all__)
