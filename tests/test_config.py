"""Configuration in one place (config/): every `WXPUSH_*` variable is a typed `Settings` field,
read once per process and never at import, and docs/configuration.md is that model.

The rule the source is held to: no module of the project (every package of the layer table,
bench/ and config/ included) touches `os.environ` or `os.getenv`, or lets typer read a variable
(`envvar=`), except to copy the environment into a child's env dict (`{**os.environ, …}`).
tests/ is exempt: tests build environments for the processes they start and read the suite's
own switch, WXPUSH_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

import config
from cli.main import app
from cli.services import local_database_url
from config import ConfigurationError, Settings, env_var, overridden, settings
from config.settings import reference_table
from db.engine import audience_database_url, database_url
from tasks.blocks import TokenMode
from tests.test_layers import LAYERS, ROOT, package_files
from wechat.errors import AccountKind

DOC = ROOT / "docs" / "configuration.md"
#: The suite's own switch (tests/fixtures/database.py): not a setting of wxpush.
TEST_ONLY = {"WXPUSH_TEST_POSTGRES_URL"}
WXPUSH_NAME = re.compile(r"\bWXPUSH_[A-Z0-9_]*[A-Z0-9]\b")


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No WXPUSH_* variable set (CI sets some), settings read afresh."""
    import os

    for name in [n for n in os.environ if n.startswith("WXPUSH_")]:
        monkeypatch.delenv(name)
    config.reload()
    return monkeypatch


# -- the source rule ----------------------------------------------------------------------------


def environment_reads(path: Path, root: Path = ROOT) -> list[str]:
    """Each place `path` reads or writes the process environment, other than copying all of
    it into a child's env dict; and each typer option that reads a variable itself."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    copied = {
        id(value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key, value in zip(node.keys, node.values, strict=True)
        if key is None  # `**value`
    }
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in {"environ", "getenv", "putenv", "unsetenv"}
        ):
            if not (node.attr == "environ" and id(node) in copied):
                found.append(f"{where} uses os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            names = {alias.name for alias in node.names} & {"environ", "getenv", "putenv"}
            found += [f"{where} imports os.{name}" for name in sorted(names)]
        elif isinstance(node, ast.keyword) and node.arg == "envvar":
            found.append(f"{where} lets typer read a variable (envvar=)")
    return sorted(found, key=lambda line: int(line.rsplit(":", 1)[1].split()[0]))


def test_no_module_reads_the_environment_outside_config() -> None:
    offenders = [
        line
        for package in sorted(LAYERS)
        for path in package_files(package)
        for line in environment_reads(path)
    ]
    assert offenders == []


def test_the_rule_can_fail(tmp_path: Path) -> None:
    """Reads, writes, `from os import`, typer's envvar: seen; a child's env copy: allowed."""
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nfrom os import getenv\nimport typer\n"
        "a = os.environ.get('WXPUSH_X')\n"
        "os.environ.setdefault('WXPUSH_Y', '1')\n"
        "b = os.getenv('WXPUSH_Z')\n"
        "child = {**os.environ, 'WXPUSH_DATABASE_URL': 'sqlite://'}\n"
        "opt = typer.Option('--x', envvar='WXPUSH_X')\n"
    )
    lines = [line.split(":", 1)[1] for line in environment_reads(source, tmp_path)]
    assert lines == [
        "2 imports os.getenv",
        "4 uses os.environ",
        "5 uses os.environ",
        "6 uses os.getenv",
        "8 lets typer read a variable (envvar=)",
    ]


@pytest.mark.process
def test_nothing_reads_the_settings_at_import() -> None:
    """Every module imports with a broken WXPUSH_DEBUG (a read would raise) and leaves the
    settings unread. A fresh interpreter: this one has imported everything long ago."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in sorted(LAYERS)
        for path in package_files(package)
        if path.name != "__main__.py" and "migrations" not in path.parts
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "from config.settings import _from_environment\n"
        "print(_from_environment.cache_info().currsize)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "WXPUSH_DEBUG": "maybe", "HOME": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"
    assert len(modules) > 50


# -- the page -----------------------------------------------------------------------------------


def test_the_page_shows_the_model() -> None:
    """docs/configuration.md carries `python -m config`'s table as it is now."""
    assert reference_table() in DOC.read_text(encoding="utf-8"), (
        "docs/configuration.md is stale: paste the output of `python -m config` into it"
    )


def test_the_page_lists_exactly_the_settings() -> None:
    rows = re.findall(r"^\| `(WXPUSH_[A-Z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M)
    assert rows == [env_var(name) for name in Settings.model_fields]


def test_every_variable_the_project_names_is_documented() -> None:
    """A WXPUSH_ name anywhere in the code, prefect.yaml, the Makefile, CI or the docs is a
    setting (or the suite's own switch) and docs/configuration.md names it: no typo'd or
    forgotten variable."""
    known = {env_var(name) for name in Settings.model_fields} | TEST_ONLY
    documented = set(WXPUSH_NAME.findall(DOC.read_text(encoding="utf-8")))
    files = [
        *(path for package in [*LAYERS, "tests"] for path in (ROOT / package).rglob("*.py")),
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / name for name in ("README.md", "prefect.yaml", "Makefile", ".ci/run")),
    ]
    named: dict[str, str] = {}
    for path in files:  # this file's own made-up names are left out
        if path.is_file() and "__pycache__" not in path.parts and path != Path(__file__):
            for name in WXPUSH_NAME.findall(path.read_text(encoding="utf-8")):
                named.setdefault(name, str(path.relative_to(ROOT)))
    assert {name: where for name, where in named.items() if name not in known} == {}
    assert known - documented == set()


# -- parsing ------------------------------------------------------------------------------------


def test_defaults(bare_environment: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bare_environment.chdir(tmp_path)
    given = settings()
    assert given.database_url is None and given.debug is False
    assert given.state_dir == Path(".wxpush") and given.home == Path(".")
    assert database_url() == f"sqlite:///{tmp_path / 'wxpush.db'}"
    assert audience_database_url() == database_url()
    assert local_database_url() == f"sqlite:///{tmp_path / '.wxpush' / 'wxpush.db'}"


def test_values_are_parsed_and_typed(bare_environment: pytest.MonkeyPatch) -> None:
    for name, value in {
        "WXPUSH_DATABASE_URL": "postgres://u@h/d",
        "WXPUSH_AUDIENCE_DATABASE_URL": " postgresql://ro@h/d ",
        "WXPUSH_ALLOW_SUPERUSER_AUDIENCE": "yes",
        "WXPUSH_DEBUG": "0",
        "WXPUSH_STATE_DIR": "/srv/state",
        "WXPUSH_ACCOUNT_KIND": "wecom",
        "WXPUSH_CALLBACK_TOKEN": "",  # empty is unset
    }.items():
        bare_environment.setenv(name, value)
    given = settings()
    assert given.allow_superuser_audience is True and given.debug is False
    assert given.state_dir == Path("/srv/state") and given.account_kind == "wecom"
    assert given.callback_token is None
    assert database_url() == "postgresql+psycopg://u@h/d"  # the driver wxpush ships with
    assert audience_database_url() == "postgresql+psycopg://ro@h/d"


def test_read_once_until_reloaded(bare_environment: pytest.MonkeyPatch) -> None:
    """(Not through monkeypatch.setenv: tests/conftest.py makes that reload.)"""
    import os
    from unittest import mock

    first = settings()
    with mock.patch.dict(os.environ, {"WXPUSH_DEBUG": "1"}):
        assert settings() is first and not settings().debug
        config.reload()
        assert settings().debug


def test_a_monkeypatched_variable_counts_at_once(bare_environment: pytest.MonkeyPatch) -> None:
    """tests/conftest.py: a test's setenv after a read is seen, without a reload."""
    assert not settings().debug
    bare_environment.setenv("WXPUSH_DEBUG", "1")
    assert settings().debug
    bare_environment.delenv("WXPUSH_DEBUG")
    assert not settings().debug


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("WXPUSH_DEBUG", "maybe", "valid boolean"),
        ("WXPUSH_ALLOW_SUPERUSER_AUDIENCE", "2", "valid boolean"),
        ("WXPUSH_DATABASE_URL", "/var/lib/wx:pw-9x.db", "not a database URL"),
        ("WXPUSH_AUDIENCE_DATABASE_URL", "pw-9x", "not a database URL"),
        ("WXPUSH_ACCOUNT_KIND", "pw-9x", "'official_account' or 'wecom'"),
        ("WXPUSH_TOKEN_MODE", "pw-9x", "'stable' or 'classic'"),
    ],
)
def test_a_bad_value_names_the_variable_never_the_value(
    bare_environment: pytest.MonkeyPatch, name: str, value: str, rule: str
) -> None:
    bare_environment.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        settings()
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and rule in message
    assert "pw-9x" not in message and "maybe" not in message
    assert "docs/configuration.md" in message


def test_secrets_never_print(bare_environment: pytest.MonkeyPatch) -> None:
    for field in ("app_secret", "callback_token", "callback_aes_key", "simulator_app_secret"):
        bare_environment.setenv(env_var(field), f"secret-of-{field}")
    given = settings()
    assert isinstance(given.callback_token, SecretStr)
    assert "secret-of" not in repr(given) and "secret-of" not in str(given.model_dump())
    assert given.app_secret is not None
    assert given.app_secret.get_secret_value() == "secret-of-app_secret"


def test_the_choices_are_the_models() -> None:
    """Settings' kinds are the ones the protocol and the block accept (written twice only
    because config/ may import nothing of ours)."""
    kinds = Settings.model_fields["account_kind"].annotation
    modes = Settings.model_fields["token_mode"].annotation
    assert set(get_args(get_args(kinds)[0])) == set(get_args(AccountKind))
    assert set(get_args(get_args(modes)[0])) == set(get_args(TokenMode))


def test_env_var_names_only_fields() -> None:
    assert env_var("database_url") == "WXPUSH_DATABASE_URL"
    with pytest.raises(KeyError):
        env_var("databse_url")


# -- overridden: a command's own values, not a rewritten environment ------------------------------


def test_overridden_applies_to_every_thread_and_ends_with_its_block(
    bare_environment: pytest.MonkeyPatch,
) -> None:
    import os

    bare_environment.setenv("WXPUSH_STATE_DIR", "/from/env")
    seen: list[str] = []
    with overridden(database_url="sqlite:////tmp/demo.db") as inner:
        thread = threading.Thread(target=lambda: seen.append(database_url()))
        thread.start()
        thread.join()
        assert settings() is inner and inner.state_dir == Path("/from/env")
    assert seen == ["sqlite:////tmp/demo.db"]
    assert settings().database_url is None
    assert "WXPUSH_DATABASE_URL" not in os.environ


def test_overridden_refuses_unknown_fields_and_bad_values() -> None:
    with pytest.raises(TypeError, match="databse_url"), overridden(databse_url="x"):
        pass
    with (
        pytest.raises(ConfigurationError, match="WXPUSH_DATABASE_URL"),
        overridden(database_url="not-a-url"),
    ):
        pass


# -- at the CLI boundary ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WXPUSH_DEBUG": "maybe"}, "WXPUSH_DEBUG: input should be a valid boolean"),
        ({"WXPUSH_DATABASE_URL": "wxpush.db"}, "WXPUSH_DATABASE_URL: not a database URL"),
    ],
)
def test_a_bad_variable_is_one_line_at_the_cli(env: dict[str, str], expected: str) -> None:
    result = CliRunner().invoke(app, ["campaign", "list"], env=env)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("wxpush campaign list: ")
    assert expected in lines[0]


def test_help_works_whatever_the_environment() -> None:
    result = CliRunner().invoke(app, ["receiver", "--help"], env={"WXPUSH_DEBUG": "maybe"})
    assert result.exit_code == 0 and "--timestamp-window" in result.output
