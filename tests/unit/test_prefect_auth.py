"""Prefect's basic auth: one setting (`prefect_auth_string`) makes the server `retrain up` starts require
it and every client retrain starts send it; an open non-loopback Prefect server is refused up front."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from retrain.core import services
from retrain.core.config import Settings
from retrain.core.events import prefect_auth_headers

AUTH = "retrain:pr3fect-s3cr3t"


def test_auth_string_reaches_the_server_and_every_client(tmp_path: Path) -> None:
    env = services.prefect_env(Settings(home=tmp_path, prefect_auth_string=AUTH))
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == AUTH  # the server requires it
    assert env["PREFECT_API_AUTH_STRING"] == AUTH  # the worker, `prefect deploy`, flow runs and the service send it
    child = services.child_env(Settings(home=tmp_path, prefect_auth_string=AUTH))
    assert child["PREFECT_API_AUTH_STRING"] == AUTH


def test_without_auth_string_no_auth_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("RETRAIN_PREFECT_AUTH_STRING", raising=False)
    env = services.prefect_env(Settings(home=tmp_path))
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env and "PREFECT_API_AUTH_STRING" not in env


@pytest.mark.parametrize("name", ["RETRAIN_PREFECT_AUTH_STRING", "PREFECT_API_AUTH_STRING"])
def test_setting_read_from_either_variable_and_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      name: str) -> None:
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.setenv(name, AUTH)
    settings = Settings(home=tmp_path)
    assert settings.prefect_auth_value == AUTH
    assert "s3cr3t" not in settings.model_dump_json() and "s3cr3t" not in repr(settings)


@pytest.mark.parametrize(("host", "auth", "insecure", "refused"), [
    ("127.0.0.1", None, False, False),
    ("0.0.0.0", None, False, True),
    ("prefect.internal", None, False, True),
    ("0.0.0.0", AUTH, False, False),
    ("0.0.0.0", None, True, False),
])
def test_open_prefect_server_beyond_loopback_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str,
                                                        auth: str | None, insecure: bool, refused: bool) -> None:
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    settings = Settings(home=tmp_path, prefect_host=host, prefect_auth_string=auth, serve_insecure=insecure)
    if refused:
        with pytest.raises(services.InsecureBindError, match="RETRAIN_PREFECT_AUTH_STRING"):
            services.prefect_server_spec(settings)
    else:
        spec = services.prefect_server_spec(settings)
        assert spec.argv[spec.argv.index("--host") + 1] == host


@pytest.mark.parametrize(("host", "url"), [("127.0.0.1", "http://127.0.0.1:4300/api"),
                                           ("0.0.0.0", "http://127.0.0.1:4300/api"),
                                           ("10.1.2.3", "http://10.1.2.3:4300/api")])
def test_clients_reach_the_bound_address(tmp_path: Path, host: str, url: str) -> None:
    settings = Settings(home=tmp_path, prefect_host=host, prefect_port=4300, serve_insecure=True)
    assert services.prefect_api_url(settings) == url


def test_event_posts_carry_prefects_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    assert prefect_auth_headers() == {}
    header = prefect_auth_headers(AUTH)["Authorization"]
    assert header.startswith("Basic ") and base64.b64decode(header[6:]).decode() == AUTH
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    assert prefect_auth_headers() == {"Authorization": header}


def test_service_events_go_over_http_with_the_auth_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service posts its events (e.g. swap_failed) to Prefect's HTTP API: a bento image has no Prefect."""
    from retrain.core import events
    from retrain.serving.runtime import _emitter

    calls: list[tuple[str, list[dict[str, object]], str | None]] = []
    monkeypatch.setattr(events, "post_events_http",
                        lambda url, evs, **kw: calls.append((url, evs, kw.get("auth_string"))) or 204)
    emit = _emitter(Settings(home=tmp_path, model_name="bike", prefect_auth_string=AUTH))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    emit("retrain.serving.swap_failed", {"alias": "champion"})
    assert calls == []  # no API configured: logged, not sent
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.test/api")
    emit("retrain.serving.swap_failed", {"alias": "champion"})
    [(url, sent, auth)] = calls
    assert url == "http://prefect.test/api" and auth == AUTH
    assert sent[0]["event"] == "retrain.serving.swap_failed" and sent[0]["payload"] == {"alias": "champion"}
    assert sent[0]["resource"]["prefect.resource.id"] == "retrain.model.bike"
