"""A PostgreSQL/Redis test that cannot reach its server skips, except under RETRAIN_REQUIRE_SERVICES=1
(CI), where it fails: a run without the servers must not pass green. The scratch URLs come from the
one admin setting, and no test spells a server address of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from tests.support import services
from tests.support.pg import scratch_database, scratch_url
from tests.support.services import client_module, hide_password, redis_database, redis_url, service_unavailable

UNREACHABLE_PG = "postgresql://alice:s3cret@127.0.0.1:1/test"  # nothing listens on port 1
UNREACHABLE_REDIS = "redis://:s3cret@127.0.0.1:1"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_REQUIRE_SERVICES", "1")


@pytest.fixture
def optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETRAIN_REQUIRE_SERVICES", raising=False)


def test_unreachable_postgres_fails_when_services_are_required(required: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_TEST_PG_ADMIN", UNREACHABLE_PG)
    with pytest.raises(pytest.fail.Exception) as failed, scratch_database("never"):
        raise AssertionError("a scratch database on an unreachable server")
    message = str(failed.value)
    assert "PostgreSQL" in message and "RETRAIN_REQUIRE_SERVICES=1" in message
    assert "postgresql://alice:***@127.0.0.1:1/test" in message and "s3cret" not in message
    assert "OperationalError" in message  # the error itself is named


def test_unreachable_postgres_skips_otherwise(optional: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_TEST_PG_ADMIN", UNREACHABLE_PG)
    with pytest.raises(pytest.skip.Exception) as skipped, scratch_database("never"):
        raise AssertionError("a scratch database on an unreachable server")
    message = str(skipped.value)
    assert "postgresql://alice:***@127.0.0.1:1/test" in message and "s3cret" not in message
    assert "set RETRAIN_REQUIRE_SERVICES=1" in message


def test_refused_credentials_fail_too(required: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # the configured server with a role that does not exist: refused (or unreachable), never a skip
    wrong = make_url(services.pg_admin_url()).set(username="retrain_no_such_role", password="wrong")
    monkeypatch.setenv("RETRAIN_TEST_PG_ADMIN", wrong.render_as_string(hide_password=False))
    with pytest.raises(pytest.fail.Exception, match="retrain_no_such_role:\\*\\*\\*@"), scratch_database("never"):
        raise AssertionError("a scratch database with wrong credentials")


def test_unreachable_redis_fails_when_required_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_TEST_REDIS_URL", UNREACHABLE_REDIS)
    monkeypatch.setenv("RETRAIN_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="Redis unavailable at redis://:\\*\\*\\*@127.0.0.1:1/7"), \
            redis_database(7):
        raise AssertionError("a Redis db on an unreachable server")
    monkeypatch.delenv("RETRAIN_REQUIRE_SERVICES")
    with pytest.raises(pytest.skip.Exception), redis_database(7):
        raise AssertionError("a Redis db on an unreachable server")


def test_a_missing_client_library_counts_as_an_unavailable_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="ModuleNotFoundError"):
        client_module("retrain_no_such_client", "PostgreSQL")
    monkeypatch.setenv("RETRAIN_REQUIRE_SERVICES", "0")
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL unavailable"):
        client_module("retrain_no_such_client", "PostgreSQL")


def test_service_unavailable_names_the_service_url_and_error(required: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAIN_TEST_REDIS_URL", "redis://user:pw@cache.internal:6380")
    with pytest.raises(pytest.fail.Exception) as failed:
        service_unavailable("Redis", ConnectionError("connection refused"))
    assert "Redis unavailable at redis://user:***@cache.internal:6380: ConnectionError: connection refused" in str(
        failed.value)


def test_scratch_url_keeps_host_port_user_and_password_of_the_admin_url(monkeypatch: pytest.MonkeyPatch) -> None:
    admin = "postgresql://alice:s%40cret@db.example:6543/admin?sslmode=require"
    got = make_url(scratch_url("scratch_1", admin))
    assert got.drivername == "postgresql+psycopg" and got.database == "scratch_1"
    assert (got.host, got.port, got.username, got.password) == ("db.example", 6543, "alice", "s@cret")
    assert dict(got.query) == {"sslmode": "require"}
    # the setting is the default source, and a SQLAlchemy spelling of it works the same
    monkeypatch.setenv("RETRAIN_TEST_PG_ADMIN", "postgresql+psycopg://bob@10.0.0.5:5433/test")
    assert scratch_url("x") == "postgresql+psycopg://bob@10.0.0.5:5433/x"
    monkeypatch.delenv("RETRAIN_TEST_PG_ADMIN")
    assert scratch_url("x") == "postgresql+psycopg://postgres@127.0.0.1:5432/x"


def test_redis_url_keeps_the_server_and_sets_the_db(monkeypatch: pytest.MonkeyPatch) -> None:
    assert redis_url(12, "redis://:pw@cache:6380/3") == "redis://:pw@cache:6380/12"
    monkeypatch.setenv("RETRAIN_TEST_REDIS_URL", "redis://cache.internal:6390")
    assert redis_url(13) == "redis://cache.internal:6390/13"
    monkeypatch.delenv("RETRAIN_TEST_REDIS_URL")
    assert redis_url(0) == "redis://127.0.0.1:6379/0"


def test_hide_password() -> None:
    assert hide_password("postgresql://u:p@h:1/d?x=1") == "postgresql://u:***@h:1/d?x=1"
    assert hide_password("postgresql://u@h/d") == "postgresql://u@h/d"


def test_no_test_spells_a_server_address_or_skips_on_its_own() -> None:
    # the settings live in tests/support/services.py; a private URL or import-skip elsewhere bypasses the rule
    forbidden = re.compile(r"127\.0\.0\.1:(5432|6379)|postgresql\+psycopg://postgres@|port[= ]*(5432|6379)\b"
                           r"|(environ|getenv).*RETRAIN_TEST_(PG_ADMIN|REDIS_URL)|importorskip\(\s*[\"'](psycopg|redis)")
    own = {Path(services.__file__).resolve(), Path(__file__).resolve()}
    offenders = [f"{path.relative_to(TESTS)}:{n}" for path in sorted(TESTS.rglob("*.py")) if path not in own
                 for n, line in enumerate(path.read_text().splitlines(), 1) if forbidden.search(line)]
    assert offenders == []
