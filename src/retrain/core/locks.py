"""Locks that serialize ingestion and materialization: across hosts when the system of record is shared.

`named_lock(settings, name, path)` is a PostgreSQL session advisory lock when the system of record is
PostgreSQL (the production and cluster profiles: every host and home that shares the database shares the
lock), and an OS file lock at `path` otherwise (the embedded default: one machine, one home). The lock is
held on its own connection for the duration of the block and released when the block ends, or by the
server when the process dies.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from retrain.core.config import Settings


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive OS lock on `path` across processes on this machine (blocks until free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (the same in every process and host; Python's hash() is not)."""
    digest = hashlib.blake2b(f"retrain:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def shares_database(settings: Settings) -> bool:
    """Whether the system of record is a server other hosts share (PostgreSQL), not an embedded file."""
    return settings.db_url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextmanager
def advisory_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock on `name`, held on its own connection (blocks until free)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    key = advisory_key(name)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()  # no transaction stays open while the lock is held
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
    finally:
        engine.dispose()


def named_lock(settings: Settings, name: str, path: Path) -> AbstractContextManager[None]:
    """Serialize `name` among everything that shares this system of record (see the module docstring)."""
    return advisory_lock(settings.db_url, name) if shares_database(settings) else file_lock(path)

