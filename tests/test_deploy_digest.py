"""`wxpush deploy` never schedules the simulator's demo template on a real account.

The rule (cli/digest_guard.py): an API on a loopback address is the simulator; any other is a
real account, whose daily-digest schedule is deployed paused unless `--digest-template-id`
is given. The deploys go through the real `prefect deploy` to the session's Prefect API, with
a prefect file holding only the digest (sending as a block of its own), and are read back.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.digest_guard import is_simulator_url
from cli.main import app as wxpush
from tasks.params import DigestParams
from wechat.simulator import defaults

REPO = Path(__file__).resolve().parents[1]
REAL_API = "https://api.weixin.qq.com"


@pytest.mark.parametrize(
    ("url", "simulator"),
    [
        ("http://127.0.0.1:8900", True),
        ("http://127.0.0.2:8900/", True),
        ("http://localhost:8900", True),
        ("http://[::1]:8900", True),
        (REAL_API, False),
        ("https://wechat-proxy.internal", False),
        ("http://10.0.0.5:8900", False),
        ("not a url", False),
    ],
)
def test_the_simulator_is_an_api_on_a_loopback_address(url: str, simulator: bool) -> None:
    assert is_simulator_url(url) is simulator


def _digest_only(folder: Path, app: str) -> Path:
    """The project's daily-digest entry, sending as `app`, alone in a prefect file."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    entry = next(d for d in config["deployments"] if d["name"] == "daily-digest")
    entry["name"] = f"digest-{app}"
    entry["parameters"] = {"params": {"app": app}}
    config["deployments"] = [entry]
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _deployed(name: str) -> Any:
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_deployment_by_name(f"daily-digest/{name}")

    return asyncio.run(read())


def _app(api_base_url: str) -> str:
    from cli.setup import setup_app

    name = f"t-{uuid.uuid4().hex[:10]}"
    setup_app(name, app_id=defaults.DEMO_APP_ID, app_secret="x" * 32, api_base_url=api_base_url)
    return name


def _deploy(prefect_file: Path, *args: str) -> Any:
    result = CliRunner().invoke(wxpush, ["deploy", "--prefect-file", str(prefect_file), *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.process  # `prefect deploy` runs as a subprocess
@pytest.mark.timeout(120)
def test_a_real_account_gets_the_digest_paused_until_it_has_a_template(
    prefect_harness: Any, tmp_path: Path
) -> None:
    app = _app(REAL_API)
    prefect_file = _digest_only(tmp_path, app)

    paused = _deploy(prefect_file)
    deployment = _deployed(f"digest-{app}")
    assert [s.active for s in deployment.schedules] == [False]
    assert "template_id" not in deployment.parameters["params"]
    assert f"daily-digest/digest-{app}: deployed with its schedule PAUSED" in paused.output
    assert REAL_API in paused.output
    assert "wxpush deploy --digest-template-id" in paused.output
    resume = f"prefect deployment schedule resume daily-digest/digest-{app} "
    assert f"{resume}{deployment.schedules[0].id}" in paused.output

    enabled = _deploy(prefect_file, "--digest-template-id", "REAL_TEMPLATE_1")
    deployment = _deployed(f"digest-{app}")
    assert [s.active for s in deployment.schedules] == [True], "redeploying switches it on"
    assert deployment.parameters["params"] == {"app": app, "template_id": "REAL_TEMPLATE_1"}
    assert "PAUSED" not in enabled.output


@pytest.mark.process
@pytest.mark.timeout(120)
def test_the_simulator_account_gets_the_digest_active_with_the_demo_template(
    prefect_harness: Any, tmp_path: Path
) -> None:
    app = _app("http://127.0.0.1:8900")
    deployed = _deploy(_digest_only(tmp_path, app))
    deployment = _deployed(f"digest-{app}")
    assert [s.active for s in deployment.schedules] == [True]
    assert deployment.parameters["params"] == {"app": app}
    assert DigestParams(app=app).template_id == defaults.DEMO_TEMPLATE_ID
    assert "PAUSED" not in deployed.output
