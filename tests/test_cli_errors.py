"""The CLI's one error boundary (cli/errors.py): each broken configuration an operator can
meet ends in one plain line naming what is wrong and how to fix it, exit 1 (usage errors 2),
and no traceback unless `--debug` or WXPUSH_DEBUG=1 asks for one.

Commands run through typer's CliRunner where no server is needed; the receiver's port and
a child service that cannot start are real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from cli.errors import explain
from cli.main import app
from processes import pick_port
from tasks.database import dispose_all
from wechat.simulator import defaults

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
KEY = defaults.DEMO_ENCODING_AES_KEY
ACCOUNT = {
    "WXPUSH_APP_ID": defaults.DEMO_APP_ID,
    "WXPUSH_CALLBACK_TOKEN": "callback-token-for-tests",
    "WXPUSH_CALLBACK_AES_KEY": KEY,
}
SEND = ["campaign", "run", "--name", "n", "--template-id", "t", "--data", "thing1=x"]


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    """Engines are cached per URL; each case must connect anew."""
    dispose_all()
    yield
    dispose_all()


def _one_line(args: list[str], env: dict[str, str] | None = None, code: int = 1) -> str:
    """Run `wxpush args`; assert the exit code, no traceback, and one line; return it."""
    result = runner.invoke(app, args, env=env)
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    if code == 1:
        lines = [line for line in output.splitlines() if line.strip()]
        assert len(lines) == 1, output
    return " ".join(output.translate(_BOX).split())  # a usage error comes in a rich box


_BOX = str.maketrans(dict.fromkeys("│╭╮╰╯─", " "))


# -- the database --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["report", "x"], ["campaign", "list"]])
def test_an_unmigrated_database_says_run_db_upgrade(tmp_path: Path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    line = _one_line(args, {"WXPUSH_DATABASE_URL": url})
    assert "is not migrated" in line and "run `wxpush db upgrade`" in line
    assert line.startswith(f"wxpush {' '.join(args[:2]) if args[0] == 'campaign' else args[0]}:")


def test_an_unsupported_database_url_names_the_choices_and_masks_the_password() -> None:
    line = _one_line(["campaign", "list"], {"WXPUSH_DATABASE_URL": "mysql://u:pw-9x@h/db"})
    assert "wxpush supports SQLite and PostgreSQL" in line
    assert "pw-9x" not in line and "***" in line


def test_a_garbage_database_url_says_what_a_url_looks_like() -> None:
    line = _one_line(["report", "x"], {"WXPUSH_DATABASE_URL": "garbage:pw-9x"})
    assert "WXPUSH_DATABASE_URL: not a database URL" in line and "postgresql://" in line
    assert "pw-9x" not in line


def test_a_sqlite_file_in_a_missing_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'wxpush.db'}"
    line = _one_line(["campaign", "list"], {"WXPUSH_DATABASE_URL": url})
    assert "unable to open database file" in line and "directory exists" in line


def _postgres_url(**parts: object) -> str:
    base = os.environ.get("WXPUSH_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("needs WXPUSH_TEST_POSTGRES_URL")
    from sqlalchemy.engine import make_url

    return make_url(base).set(password="pw-9x", **parts).render_as_string(hide_password=False)


def test_a_postgresql_database_that_does_not_exist() -> None:
    url = _postgres_url(database="wxpush_no_such_db")
    line = _one_line(["campaign", "list"], {"WXPUSH_DATABASE_URL": url})
    assert 'database "wxpush_no_such_db" does not exist' in line
    assert "check WXPUSH_DATABASE_URL" in line and "pw-9x" not in line


def test_a_postgresql_port_where_nothing_listens() -> None:
    port = pick_port(0)
    line = _one_line(["report", "x"], {"WXPUSH_DATABASE_URL": _postgres_url(port=port)})
    assert f"port {port} failed" in line and "pw-9x" not in line


def test_debug_and_wxpush_debug_keep_the_traceback(tmp_path: Path) -> None:
    env = {"WXPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    for args, extra in ((["--debug", "report", "x"], {}), (["report", "x"], {"WXPUSH_DEBUG": "1"})):
        result = runner.invoke(app, args, env={**env, **extra})
        assert result.exit_code == 1
        assert isinstance(result.exception, OperationalError)  # not translated: re-raised


def test_a_bug_is_not_explained_away() -> None:
    assert explain(RuntimeError("a bug")) is None
    assert explain(KeyError("x")) is None


# -- campaign flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "reason"),
    [(" =x", "a data field key cannot be empty"), ("thing1={bad", "unbalanced '{'")],
)
def test_a_bad_data_flag_is_a_usage_error_before_any_run(pair: str, reason: str) -> None:
    line = _one_line(
        ["campaign", "run", "--name", "n", "--template-id", "t", "--data", pair], code=2
    )
    assert reason in line


def test_a_missing_audience_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "audience.sql"
    line = _one_line([*SEND, "--audience-file", str(missing)], code=2)
    assert "does not exist" in line


def test_bad_json_in_params_file_names_the_file_and_the_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "params.json").write_text('{"name": "n",')
    monkeypatch.chdir(tmp_path)  # a long temp path would be wrapped mid-word in the error box
    line = _one_line(["campaign", "run", "--name", "n", "--params-file", "params.json"], code=2)
    assert "params.json is not valid JSON" in line and "line 1" in line


def test_an_unreachable_prefect_api_says_how_to_start_one() -> None:
    api = f"http://127.0.0.1:{pick_port(0)}/api"
    with temporary_settings(updates={PREFECT_API_URL: api}):
        line = _one_line(SEND)
    assert f"cannot reach the Prefect API at {api}" in line and "wxpush serve" in line


def test_a_missing_app_block_says_how_to_create_it(prefect_harness: object) -> None:
    line = _one_line([*SEND, "--app", "nosuchblock"])
    assert line.startswith("wxpush campaign run: There is no wechat-app block named 'nosuchblock'")
    assert "wxpush setup --app nosuchblock" in line
    digest = _one_line(["digest", "run", "--app", "nosuchblock", "--dry-run"])
    assert digest.startswith("wxpush digest run: There is no wechat-app block named")
    receiver = _one_line(["receiver", "--app", "nosuchblock"], {"WXPUSH_CALLBACK_TOKEN": ""})
    assert "There is no wechat-app block named 'nosuchblock'" in receiver

    assert "on the Prefect server at http" in line, "says which server it looked on"


@pytest.mark.process
def test_without_prefect_api_url_the_line_says_a_temporary_server_was_asked(
    tmp_path: Path,
) -> None:
    """No PREFECT_API_URL: Prefect starts a temporary server, which has none of the blocks.
    The line says so, and that server's own telemetry logs no traceback (it is off)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "WXPUSH_"))
    }
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "WXPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        # Prefect's 20 s default is too short while the suite's own servers start beside it
        # (measured: it timed out at the start of a 3-worker run); the line is the subject.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *SEND, "--app", "nosuchblock"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "database is locked" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("wxpush campaign run:")]
    assert len(lines) == 1, output[-3000:]
    assert "Prefect's temporary local server (PREFECT_API_URL is not set" in lines[0]
    assert "export PREFECT_API_URL=" in lines[0]


# -- the receiver -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("WXPUSH_CALLBACK_AES_KEY", KEY[:-1], "EncodingAESKey must be 43 characters, got 42"),
        ("WXPUSH_CALLBACK_AES_KEY", KEY[:-1] + "+", "must contain only A-Z, a-z and 0-9"),
        ("WXPUSH_CALLBACK_TOKEN", "  ", "the callback Token is empty"),
        ("WXPUSH_APP_ID", "wxapp", "AppID 'wxapp' is not wx followed by 16"),
    ],
)
def test_the_receiver_refuses_a_malformed_setting_before_it_says_receiving(
    tmp_path: Path, setting: str, value: str, reason: str
) -> None:
    env = {**ACCOUNT, setting: value, "WXPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    line = _one_line(["receiver", "--port", "1"], env)
    assert reason in line and "Receiving" not in line
    if setting == "WXPUSH_CALLBACK_AES_KEY":
        assert value not in line  # a secret is never echoed


def test_the_receiver_says_its_port_is_in_use(migrated_db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**ACCOUNT, "WXPUSH_DATABASE_URL": migrated_db_url}
        line = _one_line(["receiver", "--port", str(port)], env)
    assert f"127.0.0.1:{port} is already in use" in line and "Receiving" not in line


@pytest.mark.process
def test_a_receiver_process_with_a_bad_key_prints_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        **ACCOUNT,
        "WXPUSH_CALLBACK_AES_KEY": "short",
        "WXPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "receiver", "--port", str(pick_port(0))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # nothing announced
    assert done.stderr.strip().splitlines() == [
        "wxpush receiver: encoding_aes_key: EncodingAESKey must be 43 characters, got 5 "
        "(copy it from the server configuration page)"
    ]


# -- a child service ---------------------------------------------------------------------------


@pytest.mark.process
def test_a_child_service_that_fails_to_start_names_its_log(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "WXPUSH_STATE_DIR": str(tmp_path / "state"),
        "WXPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'wxpush.db'}",
        # The Prefect server child cannot open this database, so it exits at start-up.
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////nonexistent/dir/p.db",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "serve", "--no-simulator", "--ui-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "prefect-server exited with code" in done.stderr
    assert str(tmp_path / "state" / "logs" / "prefect-server.log") in done.stderr


@pytest.mark.process
def test_the_simulator_says_its_port_is_in_use_and_nothing_else() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "simulator", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines  # no "Unclosed client session" after it
    assert lines[0].startswith("wxpush simulator: error while attempting to bind")
    assert "address already in use: stop what listens there, or choose another port" in lines[0]


def test_the_receiver_names_an_unreachable_database(tmp_path: Path) -> None:
    env = {**ACCOUNT, "WXPUSH_DATABASE_URL": f"sqlite:///{tmp_path / 'no-dir' / 'x.db'}"}
    line = _one_line(["receiver", "--port", "1"], env)
    assert line.startswith("wxpush receiver: cannot open the database sqlite:///")
    assert "directory exists" in line and "Receiving" not in line


def test_an_unreachable_url_is_named_without_its_query_or_password() -> None:
    import httpx

    url = "https://user:pw-9x@api.example.test:8443/cgi-bin/send?access_token=tok-9x"
    line = explain(httpx.ConnectError("refused", request=httpx.Request("POST", url)))
    assert line == (
        "cannot connect to https://api.example.test:8443 (ConnectError): check that it is running"
    )
