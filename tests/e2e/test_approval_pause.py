"""Human approval under a real Prefect server: a flow pauses with the approval form; `retrain approvals`
lists it; `retrain approve` / `retrain reject` resume it with the decision; no answer in time rejects.

What the retrain does with each answer (promote, or clear the challenger, with who/when/why in the
history) is tested in tests/unit/test_approval.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.serving_home import free_port

from retrain.core import services
from retrain.core.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RETRAIN = Path(sys.executable).parent / "retrain"
FLOW = Path(__file__).resolve().parents[1] / "support" / "approval_flow.py"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(home=tmp_path_factory.mktemp("approval"), prefect_port=free_port())
    settings.ensure_dirs()
    try:
        services.start(settings, services.prefect_server_spec(settings), timeout=120)
        yield settings
    finally:
        services.stop(settings, "prefect-server")


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "PREFECT_"))}
    env.update(RETRAIN_HOME=str(settings.home), RETRAIN_PREFECT_PORT=str(settings.prefect_port))
    return env


def _start_flow(settings: Settings, timeout_hours: float) -> subprocess.Popen[str]:
    env = services.child_env(settings, {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    return subprocess.Popen([sys.executable, str(FLOW), str(timeout_hours)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _paused_run(settings: Settings, proc: subprocess.Popen[str], timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        listed = subprocess.run([str(RETRAIN), "approvals", "--json"], env=_cli_env(settings), capture_output=True,
                                text=True, timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        runs = json.loads(listed.stdout)
        if runs:
            assert len(runs) == 1, runs
            return str(runs[0]["id"])
        time.sleep(1.0)
    raise AssertionError("the flow never paused for approval")


def _result(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-3000:]
    return json.loads(lines[-1][len("RESULT "):])  # type: ignore[no-any-return]


@pytest.mark.parametrize(("command", "approved"), [("approve", True), ("reject", False)])
def test_cli_answer_resumes_the_paused_run(server: Settings, command: str, approved: bool) -> None:
    proc = _start_flow(server, timeout_hours=0.1)
    try:
        run_id = _paused_run(server, proc)
        answered = subprocess.run([str(RETRAIN), command, run_id, "--comment", f"{command} via cli", "--as", "alice"],
                                  env=_cli_env(server), capture_output=True, text=True, timeout=120)
        assert answered.returncode == 0, answered.stdout + answered.stderr
        result = _result(proc)
    finally:
        proc.kill()
    assert result["approved"] is approved and result["approver"] == "alice"
    assert result["comment"] == f"{command} via cli" and result["timed_out"] is False


def test_no_answer_in_time_rejects(server: Settings) -> None:
    proc = _start_flow(server, timeout_hours=3 / 3600)  # three seconds
    try:
        result = _result(proc, timeout=120)
    finally:
        proc.kill()
    assert result["approved"] is False and result["timed_out"] is True and result["approver"] == "timeout"


def test_answering_a_run_that_is_not_paused_fails_clearly(server: Settings) -> None:
    answered = subprocess.run([str(RETRAIN), "approve", "not-a-run-id"], env=_cli_env(server), capture_output=True,
                              text=True, timeout=120)
    assert answered.returncode == 1 and "RUN: 'not-a-run-id' is not a flow run id" in answered.stderr
