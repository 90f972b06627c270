"""The parquet offline store of landed data: one immutable part file per ingestion batch.

Layout under `settings.offline_dir`:

    <table>/part-<batch_id>.parquet    a use case's landed rows (its contract's columns, its id and
                                       event time, batch_id, batch_row)
    outcomes/part-<batch_id>.parquet   matured outcomes (id, event time, when known, label, batch_id)

Parts are written atomically (temp file in the same directory, fsync, `os.replace`), so a reader
sees a whole part or none. Temp files start with "." and never match `part-*.parquet`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow.dataset as ds

from retrain.core.config import Settings

OUTCOMES = "outcomes"


def table_dir(settings: Settings, table: str) -> Path:
    """Directory of one landed table (a use case's rows, or `outcomes`)."""
    return settings.offline_dir / table


def part_path(settings: Settings, table: str, batch_id: int) -> Path:
    return table_dir(settings, table) / f"part-{batch_id:08d}.parquet"


def quarantine_path(settings: Settings, batch_id: int) -> Path:
    return settings.quarantine_dir / f"batch-{batch_id}.parquet"


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write `frame` to `path` so that `path` either does not exist or is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


Signature = tuple[str, int, int]
K = TypeVar("K")
V = TypeVar("V")


def signature(path: Path) -> Signature:
    """What identifies one version of a part file: path, modification time and size."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def extends(new: Sequence[Signature], old: Sequence[Signature]) -> bool:
    """True when the part list `new` is `old` (unchanged) plus parts after it: read only the rest."""
    return list(new[: len(old)]) == list(old)


def read_parts(paths: Sequence[Path], columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """Concatenate part files (only the named columns); None when there are no parts.

    Readers on the per-day path (`ingest`'s id lookups, `delay_facts`) keep what they derived and
    call this with the new parts only (`signature` / `extends` tell which are new).
    """
    if not paths:
        return None
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"offline store is missing {len(missing)} landed part(s) recorded in the database, e.g. {missing[0]}"
        )
    dataset = ds.dataset([str(p) for p in paths], format="parquet")
    return dataset.to_table(columns=list(columns) if columns is not None else None).to_pandas()


def remember(cache: dict[K, V], key: K, value: V, entries: int = 8) -> None:
    """Store `value` as the newest entry of a small per-process cache, dropping the oldest beyond `entries`."""
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > entries:
        del cache[next(iter(cache))]


def parts_fingerprint(settings: Settings, tables: Sequence[str]) -> str:
    """Names of every landed part of `tables` (parts are immutable: same names, same rows)."""
    names = [f"{t}/{p.name}" for t in tables for p in all_parts(settings, t)]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def all_parts(settings: Settings, table: str) -> list[Path]:
    """Every part of a table on disk, in batch order."""
    folder = table_dir(settings, table)
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.startswith("part-") and e.name.endswith(".parquet"))
    except FileNotFoundError:
        return []
    return [folder / n for n in names]


def read_table(settings: Settings, table: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """All landed rows of one table (None when nothing landed yet)."""
    return read_parts(all_parts(settings, table), columns)


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


def ingest_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialize ingestion across processes: the duplicate check and the landing form one step."""
    return file_lock(settings.offline_dir / ".ingest.lock")
