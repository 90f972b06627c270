"""A real Prefect server started the way `retrain up` starts it, with basic auth on
(`RETRAIN_PREFECT_AUTH_STRING`): anonymous API calls are refused, while the `prefect` CLI, the worker,
`retrain alert` (the alert intake's path) and event posts get through with the auth string.

The full loop under auth (deploy, trigger, worker, flow runs, decision events) runs in
tests/e2e/test_loop.py, whose stack has the auth string set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.serving_home import free_port

from retrain.core import events, services
from retrain.core.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AUTH = "retrain:auth-e2e-s3cr3t"
RETRAIN = Path(sys.executable).parent / "retrain"


def _env(home: Path, port: int, auth: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "PREFECT_"))}
    env.update(RETRAIN_HOME=str(home), RETRAIN_PREFECT_PORT=str(port))
    if auth:
        env["RETRAIN_PREFECT_AUTH_STRING"] = auth
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("prefect-auth")
    settings = Settings(home=home, prefect_port=free_port(), prefect_auth_string=AUTH)
    settings.ensure_dirs()
    try:
        services.start(settings, services.prefect_server_spec(settings), timeout=120)
        yield settings
    finally:
        for name in ("prefect-worker", "prefect-server"):
            services.stop(settings, name)


def _api(settings: Settings, path: str, body: dict[str, Any] | None = None, *,
         auth: str | None = AUTH) -> httpx.Response:
    url = services.prefect_api_url(settings) + path
    headers = events.prefect_auth_headers(auth) if auth else {}
    if body is None:
        return httpx.get(url, headers=headers, timeout=10)
    return httpx.post(url, json=body, headers=headers, timeout=10)


def test_anonymous_calls_are_refused_but_health_answers(server: Settings) -> None:
    assert _api(server, "/health", auth=None).status_code == 200  # probes stay open
    assert _api(server, "/flows/filter", {}, auth=None).status_code == 401
    assert _api(server, "/flows/filter", {}, auth="retrain:wrong").status_code == 401
    assert _api(server, "/flows/filter", {}).status_code == 200


def test_cli_and_worker_authenticate(server: Settings) -> None:
    created = services.prefect_cli(server, "work-pool", "create", services.WORK_POOL, "--type", "process",
                                   check=False)
    assert created.returncode == 0, created.stdout + created.stderr
    anonymous = subprocess.run([services.bin_path("prefect"), "--no-prompt", "work-pool", "ls"],
                               env={**services.child_env(server), "PREFECT_API_AUTH_STRING": ""},
                               capture_output=True, text=True, timeout=120)
    assert anonymous.returncode != 0 or services.WORK_POOL not in anonymous.stdout
    services.start(server, services.prefect_worker_spec(server))
    deadline = time.monotonic() + 90
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not workers:
        answer = _api(server, f"/work_pools/{services.WORK_POOL}/workers/filter", {})
        assert answer.status_code == 200, answer.text
        workers = answer.json()
        time.sleep(1.0)
    assert workers, "the worker never registered with the authenticated server"


def test_alert_events_need_the_auth_string(server: Settings) -> None:
    body = events.build_event("retrain.alert.manual", events.model_resource("auth_check"), {"reason": "direct"})
    with pytest.raises(httpx.HTTPStatusError) as refused:
        events.post_events_http(services.prefect_api_url(server), [body], auth_string="retrain:wrong")
    assert refused.value.response.status_code == 401
    assert events.post_events_http(services.prefect_api_url(server), [body], auth_string=AUTH) == 204
    # `retrain alert` goes through the alert intake, reading the auth string from the environment
    sent = subprocess.run([str(RETRAIN), "alert", "--kind", "manual", "--reason", "auth e2e", "--json"],
                          env=_env(server.home, server.prefect_port, AUTH), capture_output=True, text=True,
                          timeout=180)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert AUTH not in sent.stdout + sent.stderr
    without = subprocess.run([str(RETRAIN), "alert", "--kind", "manual", "--reason", "no auth"],
                             env=_env(server.home, server.prefect_port, None), capture_output=True, text=True,
                             timeout=180)
    assert without.returncode == 1 and "401" in without.stdout + without.stderr
    deadline, seen = time.monotonic() + 30, set()
    while time.monotonic() < deadline and not {"direct", "auth e2e"} <= seen:
        answer = _api(server, "/events/filter", {"filter": {"event": {"prefix": ["retrain.alert."]}}, "limit": 50})
        assert answer.status_code == 200, answer.text
        seen = {e["payload"].get("reason") for e in answer.json()["events"]}
        time.sleep(1.0)
    assert {"direct", "auth e2e"} <= seen and "no auth" not in seen


def test_the_services_swap_failed_event_reaches_the_server(server: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emitter a serving worker's model follower calls on a failed swap posts over HTTP with the auth
    string (a bento image has no Prefect); the event is stored by the real server."""
    from retrain.serving.runtime import _emitter

    monkeypatch.setenv("PREFECT_API_URL", services.prefect_api_url(server))
    marker = f"e2e-swap-{time.time_ns()}"
    _emitter(server.model_copy(update={"model_name": "auth_check"}))(
        events.EVENT_SWAP_FAILED, {"alias": "champion", "version": marker, "error": "checksum mismatch"})
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        answer = _api(server, "/events/filter", {"filter": {"event": {"prefix": [events.EVENT_SWAP_FAILED]}},
                                                 "limit": 50})
        assert answer.status_code == 200, answer.text
        found = [e for e in answer.json()["events"] if e["payload"].get("version") == marker]
        time.sleep(0.5)
    [event] = found
    assert event["resource"]["prefect.resource.id"] == "retrain.model.auth_check"
