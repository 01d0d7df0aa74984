"""`processes`: the one way the CLI, the simulator, the benches and these tests run a child.

- A child that dies, or never gets ready, raises ChildFailed: one line naming it and its log
  (what the CLI prints), its output's tail attached as a note; and nothing is left running.
- `stop()` ends the whole group and every descendant, also one in a session of its own (as a
  Prefect worker starts flow runs), and SIGKILLs a child that ignores SIGTERM.
- Reading an anonymous log does not move the child's write offset (nothing is overwritten).
- `env` is laid over this environment; None removes a variable.
"""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from processes import ChildFailed, free_port, http_ok, pick_port, port_is_free, start, start_ready
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # every test starts a child


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_that_exits_names_itself_its_log_and_its_last_words(tmp_path: Path) -> None:
    log = tmp_path / "broken.log"
    code = "import sys; print('cannot open the database', flush=True); sys.exit(3)"
    with pytest.raises(ChildFailed) as failed:
        start_ready(python(code), name="broken", ready=lambda: False, timeout=30, log=log)
    assert str(failed.value) == f"broken exited with code 3; see {log}"
    assert failed.value.returncode == 3
    assert "cannot open the database" in "".join(failed.value.__notes__)


def test_a_child_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("listening nowhere", flush=True)
        time.sleep(600)
    """
    with pytest.raises(ChildFailed) as failed:
        start_ready(python(code), name="mute", ready=lambda: False, timeout=3)
    assert str(failed.value) == "mute not healthy after 3 s"  # an anonymous log: no path
    assert "listening nowhere" in "".join(failed.value.__notes__)
    assert gone(int(pid_file.read_text()))


def test_stop_ends_the_group_and_a_descendant_in_its_own_session(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = f"""
        import subprocess, sys, time
        sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
        same_group = subprocess.Popen(sleep)
        own_session = subprocess.Popen(sleep, start_new_session=True)
        open({str(pids)!r}, "w").write(f"{{same_group.pid}} {{own_session.pid}}")
        time.sleep(600)
    """
    child = start(python(code), name="parent")
    wait_until(lambda: pids.exists() and pids.read_text(), "the grandchildren started")
    grandchildren = [int(pid) for pid in pids.read_text().split()]
    took = child.stop(timeout=10)
    assert took < 10
    assert child.process.returncode == -signal.SIGTERM
    assert all(gone(pid) for pid in grandchildren)


def test_a_child_that_ignores_sigterm_is_killed() -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
    """
    child = start(python(code), name="stubborn")
    child.wait_ready(lambda: "ready" in child.output(), timeout=30, poll=0.01)
    took = child.stop(timeout=1)
    assert took >= 1
    assert child.process.returncode == -signal.SIGKILL


def test_reading_an_anonymous_log_leaves_the_childs_writes_in_order() -> None:
    code = """
        for n in range(50000):
            print(n, flush=True)
    """
    child = start(python(code), name="chatty")
    reads = 0
    while child.process.poll() is None:
        child.output()  # a seek here would make the child overwrite the start of its log
        reads += 1
    lines = child.output().split()
    child.close()
    assert reads > 1
    assert lines == [str(n) for n in range(50000)]


def test_env_is_laid_over_this_environment_and_none_removes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHILD_TEST_KEPT", "kept")
    monkeypatch.setenv("CHILD_TEST_REMOVED", "removed")
    code = """
        import os
        print(os.environ.get("CHILD_TEST_KEPT"), os.environ.get("CHILD_TEST_REMOVED"),
              os.environ.get("CHILD_TEST_ADDED"), os.getcwd())
    """
    env = {"CHILD_TEST_REMOVED": None, "CHILD_TEST_ADDED": "added"}
    with start(python(code), name="env", env=env, cwd="/") as child:
        assert child.process.wait(timeout=30) == 0
        assert child.output().split() == ["kept", "None", "added", "/"]


def test_http_ok_and_the_ports() -> None:
    port = free_port()
    assert port_is_free(port)
    assert pick_port(port) == port
    assert not http_ok(f"http://127.0.0.1:{port}/health")()  # nobody listens: not ready
    code = f"""
        import http.server
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/health" else 503)
                self.end_headers()
        http.server.HTTPServer(("127.0.0.1", {port}), Health).serve_forever()
    """
    with start_ready(
        python(code), name="web", ready=http_ok(f"http://127.0.0.1:{port}/health"), timeout=30
    ):
        assert not port_is_free(port)
        assert pick_port(port) != port
        assert not http_ok(f"http://127.0.0.1:{port}/other")()
        assert http_ok(f"http://127.0.0.1:{port}/other", status=None)()
