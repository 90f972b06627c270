"""The parquet offline store of landed data: one immutable part file per ingestion batch.

Layout under `settings.offline_dir`:

    <table>/part-<batch_id>.parquet    a use case's landed rows (its contract's columns, its id and
                                       event time, batch_id, batch_row)
    outcomes/part-<batch_id>.parquet   matured outcomes (id, event time, when known, label, batch_id)

Landing is stage -> commit -> publish: a part is written (atomically) under a hidden staged name,
the batch row commits, then `publish` renames the part into place. The database is what says a
batch landed: readers ask it for the landed batches and read their parts (`read_parts` also finds a
committed batch's part that is still staged), never "every part on disk". A crash leaves at most a
staged part of a batch that never committed, or a committed batch whose part is still staged;
`repair.sweep` (run under the ingest lock before landing) deletes the first and publishes the
second. Temp and staged files start with "." and never match `part-*.parquet`. `crashpoint` kills
the process at a named step when RETRAIN_CRASH_AT names it (the crash tests); inert otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pandas as pd
import pyarrow.dataset as ds

from retrain.core.config import Settings
from retrain.core.locks import named_lock

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

OUTCOMES = "outcomes"
STAGED = ".staged-"  # prefix of a part written but not yet published
ORPHANED = "orphaned"  # sub-folder where `repair.sweep` keeps published parts no landed batch records
CRASH_AT = "RETRAIN_CRASH_AT"  # names the step `crashpoint` kills the process at ("step" or "step:N")
PART = re.compile(r"part-(\d+)\.parquet")


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
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make renames and creations in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- stage -> commit -> publish

_HITS: dict[str, int] = {}


def crashpoint(step: str) -> None:
    """Kill this process (SIGKILL: no cleanup runs) when RETRAIN_CRASH_AT names `step`; inert otherwise.

    `step:N` kills at the N-th time the step is reached in this process (`step` alone: the first).
    """
    wanted = os.environ.get(CRASH_AT)
    if not wanted or wanted.partition(":")[0] != step:
        return
    _HITS[step] = _HITS.get(step, 0) + 1
    if _HITS[step] >= int(wanted.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def staged_path(path: Path) -> Path:
    """Where the part `path` waits between its write and its batch's commit (never matched by `part-*`)."""
    return path.with_name(f"{STAGED}{path.name}")


def stage(frame: pd.DataFrame, path: Path) -> Path:
    """Write `frame` (atomically) as the staged part of `path`; `publish` moves it into place."""
    return write_parquet_atomic(frame, staged_path(path))


def publish(paths: Sequence[Path]) -> list[Path]:
    """Rename the staged parts of a committed batch into place (idempotent: a published part stays)."""
    for i, path in enumerate(paths):
        if i:
            crashpoint("publishing")  # between two renames: one part published, the next still staged
        staged = staged_path(path)
        if staged.exists() or not path.exists():
            os.replace(staged, path)
    for folder in {p.parent for p in paths}:
        fsync_dir(folder)
    return list(paths)


def resolve(paths: Sequence[Path]) -> list[Path]:
    """Where each committed batch's part is: in place, or still staged when the process stopped (or
    is) between commit and publish. Raises FileNotFoundError naming the parts that are nowhere."""
    found = []
    for path in paths:
        staged = staged_path(path)
        found.append(staged if not path.exists() and staged.exists() else path)
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"offline store is missing {len(missing)} landed part(s) recorded in the database, e.g. {missing[0]}"
        )
    return found


def published_path(path: Path) -> Path:
    """The in-place name of a part given by its staged (or in-place) name."""
    name = path.name
    return path.with_name(name[len(STAGED):]) if name.startswith(STAGED) else path


_SESSIONS: dict[tuple[int, str], sessionmaker[Session]] = {}


def sessions_for(settings: Settings) -> sessionmaker[Session]:
    """Sessions on `settings`' system of record, one engine per URL per process, holding no idle
    connection (no migration: for readers of a home that ingestion already set up)."""
    from sqlalchemy.pool import NullPool

    from retrain.core.db import make_engine, session_factory

    key = (os.getpid(), settings.db_url)
    found = _SESSIONS.get(key)
    if found is None:
        found = session_factory(make_engine(settings.db_url, poolclass=NullPool))
        remember(_SESSIONS, key, found)
    return found


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

    `paths` are parts of landed batches, published or still staged (`resolve`); one published while
    this reads is found in place. Readers on the per-day path (`ingest`'s id lookups, `delay_facts`)
    keep what they derived and call this with the new parts only (`signature` / `extends` tell which).
    """
    if not paths:
        return None
    found = resolve([published_path(p) for p in paths])
    try:
        dataset = ds.dataset([str(p) for p in found], format="parquet")
    except FileNotFoundError:  # a staged part was published between resolve and open
        dataset = ds.dataset([str(p) for p in resolve([published_path(p) for p in paths])], format="parquet")
    return dataset.to_table(columns=list(columns) if columns is not None else None).to_pandas()


def remember(cache: dict[K, V], key: K, value: V, entries: int = 8) -> None:
    """Store `value` as the newest entry of a small per-process cache, dropping the oldest beyond `entries`."""
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > entries:
        del cache[next(iter(cache))]


def parts_fingerprint(paths: Sequence[Path]) -> str:
    """Names of landed parts (parts are immutable: same names, same rows); staged or published alike."""
    names = [f"{p.parent.name}/{published_path(p).name}" for p in paths]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def all_parts(settings: Settings, table: str) -> list[Path]:
    """Every published part of a table on disk, in batch order (what is on disk, for checks and tools:
    readers of landed data take the database's landed batches instead)."""
    folder = table_dir(settings, table)
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.startswith("part-") and e.name.endswith(".parquet"))
    except FileNotFoundError:
        return []
    return [folder / n for n in names]


def read_table(settings: Settings, table: str, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    """The rows of every published part of one table on disk (None when there is none); see `all_parts`."""
    return read_parts(all_parts(settings, table), columns)


def ingest_lock(settings: Settings) -> AbstractContextManager[None]:
    """Serialize a use case's ingestion: the duplicate check and the landing form one step (across hosts
    when the system of record is PostgreSQL, `retrain.core.locks.named_lock`)."""
    return named_lock(settings, f"ingest:{settings.model_name}", settings.offline_dir / ".ingest.lock")
