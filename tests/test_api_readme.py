"""The README's two signed-request snippets ("Push one message from your backend") really
sign: each runs as written (Python in a child interpreter, the shell one in bash with curl
and openssl) against a small HTTP server on 127.0.0.1 that records what it received, and the
recorded request passes api.signing.verify with the key the snippet was given."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from api import signing
from api.signing import ApiKey

pytestmark = pytest.mark.process  # the snippets run as child processes

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Push one message from your backend"
KEY_ID = "wxk0a1b2c3d4e5f6a7b8c9d"
#: Like a real secret (token_urlsafe(32)), with a leading dash to catch unquoted use.
SECRET = "-Xv3_kq9ZtR0pL7mN2bC5dF8gH1jK4sW6yQ0eA9uI3o"
ANSWER = {"id": "msg_0123456789abcdefghijkl", "status": "queued"}


def _snippet(language: str) -> str:
    """The one fenced block of `language` in the README's section."""
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"one ```{language} block in the README's {SECTION!r}"
    return blocks[0]


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Recorder(BaseHTTPRequestHandler):
    received: list[Received]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.received.append(Received("POST", self.path, dict(self.headers.items()), body))
        answer = json.dumps(ANSWER).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[Received]]]:
    """A local server that records each request and answers 202 queued."""
    received: list[Received] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _env(url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "API_URL": url,
        "API_KEY_ID": KEY_ID,
        "API_KEY_SECRET": SECRET,
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def _check(received: list[Received], output: str) -> None:
    """One request, as the README's section describes it, signed by the key it was given."""
    assert len(received) == 1, received
    request = received[0]
    key = ApiKey(KEY_ID, "readme", SecretStr(SECRET))
    assert (
        signing.verify(
            request.headers, request.method, request.path, request.body, {KEY_ID: key}.get
        )
        is key
    )
    assert request.path == "/v1/messages?wait=5"
    message = json.loads(request.body)
    assert message["kind"] == "template" and message["idempotency_key"] == "order-1001-shipped"
    assert json.loads(output) == ANSWER, "the snippet prints the API's answer"
    # and the signature really is over these bytes: one changed byte is refused
    with pytest.raises(signing.Refusal, match="bad-signature"):
        signing.verify(
            request.headers, "POST", request.path, request.body + b" ", {KEY_ID: key}.get
        )


def test_the_python_snippet_signs_correctly(
    recorder: tuple[str, list[Received]], tmp_path: Path
) -> None:
    url, received = recorder
    script = tmp_path / "push.py"
    script.write_text(_snippet("python"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-I", str(script)],
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    _check(received, done.stdout)


def test_the_curl_and_openssl_snippet_signs_correctly(
    recorder: tuple[str, list[Received]], tmp_path: Path
) -> None:
    missing = [tool for tool in ("bash", "curl", "openssl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the README's shell snippet needs {' and '.join(missing)}, not installed")
    url, received = recorder
    script = tmp_path / "push.sh"
    script.write_text("set -euo pipefail\n" + _snippet("sh"), encoding="utf-8")
    done = subprocess.run(
        ["bash", str(script)], env=_env(url), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    _check(received, done.stdout)
