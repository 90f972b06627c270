"""Credentials in settings never reach output: the API key and the database, registry and Redis URLs
are `SecretStr`. Settings dumps (reports, `retrain usecases show`), `retrain status` and error lines
show them masked, while the code that connects still gets the real values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from retrain.backtest.results import settings_used
from retrain.core.config import Settings, redis_connection_string, reveal
from retrain.serving.runtime import ApiKeyMiddleware, serve_env
from retrain.usecase.catalog import load_usecase, settings_for

RETRAIN = Path(sys.executable).parent / "retrain"
SECRETS = {
    "RETRAIN_API_KEY": "key-s3cr3t-0001",
    "RETRAIN_DATABASE_URL": "postgresql+psycopg://retrain:db-s3cr3t-0002@127.0.0.1:1/retrain",
    "RETRAIN_FEAST_REGISTRY_URL": "postgresql+psycopg://feast:reg-s3cr3t-0003@127.0.0.1:1/feast",
    "RETRAIN_REDIS_URL": "redis://:redis-s3cr3t-0004@127.0.0.1:1/0",
}
MARKERS = ("s3cr3t",)


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, api_key=SECRETS["RETRAIN_API_KEY"], database_url=SECRETS["RETRAIN_DATABASE_URL"],
                    feast_registry_url=SECRETS["RETRAIN_FEAST_REGISTRY_URL"], redis_url=SECRETS["RETRAIN_REDIS_URL"])


def _leaks(text: str) -> list[str]:
    return [m for m in MARKERS if m in text]


def test_settings_dumps_mask_every_credential(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for text in (repr(settings), str(settings), settings.model_dump_json(),
                 json.dumps(settings.model_dump(mode="json")), json.dumps(settings_used(settings))):
        assert _leaks(text) == [], text
    assert settings.model_dump(mode="json")["api_key"] == "**********"


def test_connecting_code_still_gets_the_real_values(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.db_url == SECRETS["RETRAIN_DATABASE_URL"]
    assert settings.registry_url == SECRETS["RETRAIN_FEAST_REGISTRY_URL"]
    assert settings.redis_url_value == SECRETS["RETRAIN_REDIS_URL"]
    assert settings.api_key_value == SECRETS["RETRAIN_API_KEY"]
    assert settings.feast_env()["RETRAIN_FEAST_REGISTRY_URL"] == SECRETS["RETRAIN_FEAST_REGISTRY_URL"]
    assert settings.feast_env()["RETRAIN_REDIS_CONNECTION"] == "127.0.0.1:1,db=0,password=redis-s3cr3t-0004"
    env = serve_env(settings)  # the child server process reads them back from its environment
    for name in ("RETRAIN_DATABASE_URL", "RETRAIN_FEAST_REGISTRY_URL", "RETRAIN_REDIS_URL"):
        assert env[name] == SECRETS[name]
    assert ApiKeyMiddleware(lambda *a: None, settings_provider=lambda: settings).api_key == SECRETS["RETRAIN_API_KEY"]


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://10.0.0.7:6379/0", "10.0.0.7:6379,db=0"),
    ("redis://cache:6380", "cache:6380,db=0"),
    ("redis://:p%40ss@cache:6380/3", "cache:6380,db=3,password=p@ss"),
    ("rediss://user:pw@cache/2", "cache:6379,db=2,password=pw,ssl=true"),
])
def test_redis_url_becomes_feast_connection_string(url: str, expected: str) -> None:
    """A password or TLS in the Redis URL reaches Feast (it was dropped into the host part before)."""
    assert redis_connection_string(url) == expected


def test_defaults_and_plain_strings_from_model_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):  # another test module may leave RETRAIN_* variables behind
        if name.startswith("RETRAIN_"):
            monkeypatch.delenv(name)
    plain = Settings(home=tmp_path)
    assert plain.api_key_value is None and plain.db_url == f"sqlite:///{tmp_path / 'retrain.db'}"
    assert plain.registry_url == f"sqlite:///{tmp_path / 'feast_registry.db'}"
    assert Settings(home=tmp_path, api_key="").api_key_value is None  # an empty key is no key
    copied = plain.model_copy(update={"database_url": "sqlite:///elsewhere.db"})  # not validated: a plain str
    assert copied.db_url == "sqlite:///elsewhere.db" and reveal(SecretStr("x")) == "x" and reveal(None) is None


def test_use_case_settings_keep_the_secrets_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _settings(tmp_path)
    merged = settings_for(load_usecase(base, "bike_sharing"), base)
    assert merged.db_url == SECRETS["RETRAIN_DATABASE_URL"] and merged.api_key_value == SECRETS["RETRAIN_API_KEY"]
    assert _leaks(merged.model_dump_json()) == []


@pytest.mark.parametrize("argv", [["usecases", "show", "bike_sharing"], ["usecases", "list"], ["status"],
                                  ["--debug", "status"], ["monitor"]])
def test_cli_output_never_prints_a_credential(tmp_path: Path, argv: list[str]) -> None:
    """Commands that print settings, or fail on the (unreachable) database, print no credential."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    env.update(SECRETS, RETRAIN_HOME=str(tmp_path / "home"))
    proc = subprocess.run([str(RETRAIN), *argv], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert out.strip(), "the command printed nothing"
    assert _leaks(out) == [], out
