"""A scratch PostgreSQL database per test: created on the admin connection, dropped afterwards.

The server is the one of `RETRAIN_TEST_PG_ADMIN` (tests/support/services.py); when it cannot be
reached the test skips, or fails under `RETRAIN_REQUIRE_SERVICES=1`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import make_url
from tests.support.services import CONNECT_TIMEOUT_S, client_module, pg_admin_url, service_unavailable


def scratch_url(database: str, admin_url: str | None = None) -> str:
    """The SQLAlchemy URL of `database` on the admin URL's server: same host, port, user, password
    and query options, psycopg driver."""
    base = make_url(admin_url if admin_url is not None else pg_admin_url())
    return base.set(drivername="postgresql+psycopg", database=database).render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """`url` as psycopg takes it (no SQLAlchemy driver suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pg_connect(admin_url: str | None = None) -> Any:
    """A plain autocommit connection on the admin URL (errors propagate: for use once the server is known up)."""
    import psycopg

    url = admin_url if admin_url is not None else pg_admin_url()
    return psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def pg_admin(admin_url: str | None = None) -> Any:
    """An autocommit connection on the admin URL; the test skips (or fails under
    RETRAIN_REQUIRE_SERVICES=1) when it cannot be opened."""
    url = admin_url if admin_url is not None else pg_admin_url()
    client_module("psycopg", "PostgreSQL")
    target = libpq_url(url)  # a malformed setting is an error, not an absent server
    try:
        return pg_connect(target)
    except Exception as exc:
        service_unavailable("PostgreSQL", exc, url)


def pg_execute(sql: str, admin_url: str | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh admin connection; its rows (none for DDL)."""
    with pg_connect(admin_url) as conn:
        cur = conn.execute(sql)
        return list(cur.fetchall()) if cur.description else []


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database `<prefix>_<random>`, dropped afterwards."""
    admin = pg_admin()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield scratch_url(name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
