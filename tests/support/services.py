"""Where the tests find PostgreSQL and Redis, and what happens when they are not there.

One setting per server: `RETRAIN_TEST_PG_ADMIN` (a URL of a PostgreSQL database the tests may
connect to and create databases from) and `RETRAIN_TEST_REDIS_URL` (the Redis server; each test
picks its own db number). A test that cannot reach a server, or is refused by it, is skipped; with
`RETRAIN_REQUIRE_SERVICES=1` (CI) it fails instead, so a run without the servers cannot pass green.
Scratch PostgreSQL databases are in tests/support/pg.py.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_ADMIN_ENV = "RETRAIN_TEST_PG_ADMIN"
PG_ADMIN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_ENV = "RETRAIN_TEST_REDIS_URL"
REDIS_DEFAULT = "redis://127.0.0.1:6379"
REQUIRE_ENV = "RETRAIN_REQUIRE_SERVICES"
CONNECT_TIMEOUT_S = 3


def services_required() -> bool:
    """True when an unavailable server must fail the test rather than skip it."""
    return os.environ.get(REQUIRE_ENV, "").strip() == "1"


def pg_admin_url() -> str:
    """The PostgreSQL admin URL (a `postgresql+psycopg://` spelling is accepted too)."""
    return os.environ.get(PG_ADMIN_ENV, "").strip() or PG_ADMIN_DEFAULT


def redis_base_url() -> str:
    """The Redis server URL (any db number in it is replaced per test)."""
    return os.environ.get(REDIS_ENV, "").strip() or REDIS_DEFAULT


def redis_url(db: int, base_url: str | None = None) -> str:
    """The URL of Redis db number `db` on the configured server."""
    parts = urlsplit(base_url if base_url is not None else redis_base_url())
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))


def hide_password(url: str) -> str:
    """`url` with its password, if any, shown as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def service_unavailable(what: str, exc: BaseException, url: str | None = None) -> NoReturn:
    """Skip the test because `what` is unavailable, or fail it when RETRAIN_REQUIRE_SERVICES=1.

    The message names the service, its URL (password hidden; by default the configured URL of
    Redis when `what` names it, else of PostgreSQL) and the error."""
    if url is None:
        url = redis_base_url() if "redis" in what.lower() else pg_admin_url()
    message = f"{what} unavailable at {hide_password(url)}: {type(exc).__name__}: {str(exc).strip()}"
    if services_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: the test must not be skipped)", pytrace=False)
    pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to make this a failure)")


def client_module(name: str, what: str) -> ModuleType:
    """Import a client library (psycopg, redis); a missing one counts as `what` being unavailable."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        service_unavailable(what, exc)


def redis_client(db: int) -> Any:
    """A Redis client on db number `db` that answered a ping (skip or fail when none does)."""
    redis = client_module("redis", "Redis")
    url = redis_url(db)
    client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        client.ping()
    except Exception as exc:
        client.close()
        service_unavailable("Redis", exc, url)
    return client


@contextmanager
def redis_database(db: int) -> Iterator[str]:
    """The URL of Redis db number `db`, flushed before and after."""
    client = redis_client(db)
    try:
        client.flushdb()
        try:
            yield redis_url(db)
        finally:
            client.flushdb()
    finally:
        client.close()
