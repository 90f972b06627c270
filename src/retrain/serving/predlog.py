"""The prediction log: every served prediction goes to the SQL `predictions` table, in batches.

The request path only appends to an in-memory buffer (`submit`); a background task (`run`) drains
it every `serve_log_flush_seconds`, lets a hook add the shadow challenger's scores, and inserts the
rows in one transaction. When the database write fails, the batch is written to a spill file under
`RETRAIN_HOME/spill/` (temp file + fsync + atomic rename, one sealed file per batch), and later
flushes replay the spill files once the database answers again. Spill files written in the layout
of before migration 0003 replay too (`migrations.legacy_rows`). Nothing is lost silently:

- every row gets a unique `row_key` before it is first written or spilled, and every insert is
  "on conflict (row_key) do nothing": a spill file replayed twice (a crash between the replay's
  commit and the file's deletion) adds its rows once. Rows of spill files written before migration
  0005 carry no key; they get one derived from the file's content (request, entity, prediction
  time, line), the same on every replay.
- a spill file is claimed by renaming it (one worker wins), inserted in one transaction, then
  deleted; a replay that fails because the database is unreachable renames it back and is retried
  later. A claim left by a dead process is released at start.
- a spill file that fails for a data reason (unreadable JSON, a row the database rejects: a NULL in a
  required column, a value too long, ...) is moved to `spill/quarantine/` with a `.reason.json`
  next to it, counted (`quarantined`) and logged; the replay goes on with the next files. Fix it and
  move it back into `spill/` to replay it. A direct write the database rejects is retried request by
  request, and only the rejected requests' rows go to a spill file (and from there to quarantine).
- the buffer holds at most `max_buffer_rows` rows (setting `serve_log_buffer_rows`; one request
  always fits an empty buffer). Rows past it are handed to an overflow writer thread that spills
  them to disk (without shadow scores), off the request path, while the flush may be stuck on a slow
  database; the overflow holds at most as many rows again. A row that finds both full is dropped,
  counted (`dropped`) and logged (rate-limited) -- never silently. So at most about
  2 x `max_buffer_rows` rows are in memory.
- on shutdown, set the stop event and await `run`: it finishes the flush in progress, then writes
  (or spills) whatever is still buffered. Cancelling the task mid-write lost rows in a trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Insert

from retrain.core.db import Prediction, transaction
from retrain.migrations.legacy_rows import upgrade_spill_row

log = logging.getLogger(__name__)

SPILL_SUFFIX = ".jsonl"
CLAIM_MARK = ".claimed-"
QUARANTINE_DIR = "quarantine"
REASON_SUFFIX = ".reason.json"
OVERFLOW_REPORT_SECONDS = 10.0  # at most one overflow/drop log line per this many seconds (counts accumulate)
DATETIME_COLUMNS = ("predicted_at", "event_time")
COLUMNS = ("row_key", "request_id", "model_name", "model_version", "predicted_at", "entity_key", "event_time",
           "attributes", "features", "missing_features", "score", "shadow_version", "shadow_score")


@dataclass
class LogBatch:
    """Rows of one request (dicts keyed by `COLUMNS`; `row_key` is set by the log) and their feature matrix."""

    rows: list[dict[str, Any]]
    matrix: np.ndarray | None = None


class LogCounters(Protocol):
    """Where the log reports what it did (the Prometheus counters in serving, plain ints in tests)."""

    def written(self, n: int) -> None: ...
    def spilled(self, n: int) -> None: ...
    def replayed(self, n: int) -> None: ...
    def write_failed(self) -> None: ...
    def quarantined(self, n: int) -> None: ...
    def overflowed(self, n: int) -> None: ...
    def dropped(self, n: int) -> None: ...


@dataclass
class Tally:
    """Counts kept by the log itself (also the default `LogCounters`).

    `n_quarantined` counts spill files, the others rows; `n_duplicates` counts replayed rows already
    in the table (kept here only, not a `LogCounters` method).
    """

    n_written: int = 0
    n_spilled: int = 0
    n_replayed: int = 0
    n_failures: int = 0
    n_quarantined: int = 0
    n_overflowed: int = 0
    n_dropped: int = 0
    n_duplicates: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, name: str, n: int) -> None:  # the flusher, the overflow writer and requests all count
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def written(self, n: int) -> None:
        self._add("n_written", n)

    def spilled(self, n: int) -> None:
        self._add("n_spilled", n)

    def replayed(self, n: int) -> None:
        self._add("n_replayed", n)

    def write_failed(self) -> None:
        self._add("n_failures", 1)

    def quarantined(self, n: int) -> None:
        self._add("n_quarantined", n)

    def overflowed(self, n: int) -> None:
        self._add("n_overflowed", n)

    def dropped(self, n: int) -> None:
        self._add("n_dropped", n)


@dataclass
class _Fanout:
    targets: list[Any] = field(default_factory=list)

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            for target in self.targets:
                getattr(target, name)(*args)

        return call


class SpillFileError(ValueError):
    """A spill file that cannot be read back (bad JSON, a malformed row): a data problem, quarantined."""


def clean_features(names: list[str], values: Iterable[float]) -> dict[str, float | None]:
    """Feature values as JSON-safe floats (NaN -> None: neither JSON nor PostgreSQL take NaN)."""
    return {n: (None if v is None or not math.isfinite(v) else float(v)) for n, v in zip(names, values, strict=True)}


def is_data_error(exc: BaseException) -> bool:
    """True when a write failed because of the rows (retrying cannot help), not because of the database.

    Integrity errors (NULL in a required column, ...) and data errors (a value too long, invalid
    JSON for PostgreSQL) come from the database; a statement error that is not a driver error is a
    value SQLAlchemy could not bind (a naive datetime, a non-JSON value). Anything else -- connection
    refused, locked, a missing column before the migrations ran -- is the database's state: retried.
    """
    if isinstance(exc, IntegrityError | DataError):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


@lru_cache(maxsize=8)
def _insert_once(dialect: str) -> Insert:
    """INSERT into predictions that skips rows whose `row_key` is already there (SQLite and PostgreSQL)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(Prediction).on_conflict_do_nothing(index_elements=["row_key"])
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(Prediction).on_conflict_do_nothing(index_elements=["row_key"])
    return insert(Prediction)  # other backends: a duplicate key fails the write (then it is retried)


def spill_row_key(row: dict[str, Any], line: int) -> str:
    """The key of a spill row written without one (before migration 0005): the same on every replay."""
    ident = json.dumps([row.get("request_id"), row.get("model_name"), row.get("model_version"),
                        row.get("entity_key"), row.get("predicted_at"), line], default=str)
    return "spill-" + hashlib.blake2b(ident.encode("utf-8"), digest_size=16).hexdigest()


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for col in DATETIME_COLUMNS:
        if isinstance(out.get(col), datetime):
            out[col] = out[col].isoformat()
    return out


def _decode(row: dict[str, Any], line: int) -> dict[str, Any]:
    row = upgrade_spill_row(row)
    out = {k: row.get(k) for k in COLUMNS}
    if not out["row_key"]:
        out["row_key"] = spill_row_key(row, line)
    if out["attributes"] is None:
        out["attributes"] = {}
    for col in DATETIME_COLUMNS:
        text = out[col]
        if isinstance(text, str):
            value = datetime.fromisoformat(text)
            out[col] = value if value.tzinfo else value.replace(tzinfo=UTC)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SpillDir:
    """Sealed JSONL batches under one directory, claimable by exactly one process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def quarantine_dir(self) -> Path:
        return self.path / QUARANTINE_DIR

    def write(self, rows: list[dict[str, Any]]) -> Path:
        """Write one batch durably (temp + fsync + rename); returns the sealed file."""
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        final = self.path / f"predictions-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SPILL_SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=".spill-", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(_encode(row), allow_nan=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def sealed(self) -> list[Path]:
        """Unclaimed spill files, oldest first."""
        if not self.path.exists():
            return []
        return sorted(self.path.glob(f"predictions-*{SPILL_SUFFIX}"))

    def quarantined(self) -> list[Path]:
        """Spill files set aside for a data problem (each with its `.reason.json`), oldest first."""
        if not self.quarantine_dir.exists():
            return []
        return sorted(self.quarantine_dir.glob(f"predictions-*{SPILL_SUFFIX}"))

    def claim(self, path: Path) -> Path | None:
        """Take a file for replay by renaming it; None when another process got it first."""
        claimed = path.with_name(f"{path.name}{CLAIM_MARK}{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return None
        return claimed

    @staticmethod
    def release(claimed: Path) -> None:
        """Give a claimed file back (replay failed)."""
        os.rename(claimed, claimed.with_name(claimed.name.split(CLAIM_MARK)[0]))

    def quarantine(self, claimed: Path, reason: str, *, rows: int | None = None) -> Path:
        """Move a claimed file to `quarantine/`, with `<name>.reason.json` saying why; returns its new path."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        name = claimed.name.split(CLAIM_MARK)[0]
        target = self.quarantine_dir / name
        if target.exists():  # the same file quarantined before, moved back, and failing again
            target = target.with_name(f"{name.removesuffix(SPILL_SUFFIX)}-{uuid.uuid4().hex[:8]}{SPILL_SUFFIX}")
        note = {"file": target.name, "reason": reason, "rows": rows,
                "quarantined_at": datetime.now(UTC).isoformat(), "pid": os.getpid()}
        target.with_name(target.name + REASON_SUFFIX).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        os.rename(claimed, target)
        return target

    def release_orphans(self) -> int:
        """Release claims whose process is gone (it died mid-replay); returns how many."""
        if not self.path.exists():
            return 0
        n = 0
        for claimed in self.path.glob(f"predictions-*{SPILL_SUFFIX}{CLAIM_MARK}*"):
            pid_text = claimed.name.rsplit(CLAIM_MARK, 1)[-1]
            if pid_text.isdigit() and (int(pid_text) == os.getpid() or not _pid_alive(int(pid_text))):
                with contextlib.suppress(FileNotFoundError):
                    self.release(claimed)
                    n += 1
        return n

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The file's rows, decoded; `SpillFileError` names the first line that cannot be read."""
        out: list[dict[str, Any]] = []
        with path.open(encoding="utf-8", errors="strict") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    if not isinstance(raw, dict):
                        raise ValueError(f"a JSON {type(raw).__name__}, not an object")
                    out.append(_decode(raw, number))
                except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
                    raise SpillFileError(f"line {number}: {_first_line(exc)}") from exc
        return out


class PredictionLog:
    """Buffer + background flusher + spill/replay for the `predictions` table (see module doc)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        spill_dir: Path,
        *,
        flush_seconds: float = 0.5,
        retry_seconds: float = 2.0,
        max_rows: int = 5000,
        max_buffer_rows: int = 100_000,
        enrich: Callable[[list[LogBatch]], None] | None = None,
        counters: LogCounters | None = None,
    ) -> None:
        if max_buffer_rows <= 0:
            raise ValueError(f"max_buffer_rows must be > 0, got {max_buffer_rows}")
        self.sessions = sessions
        self.spill = SpillDir(spill_dir)
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.max_rows = max_rows
        self.max_buffer_rows = max_buffer_rows
        self.enrich = enrich
        self.tally = Tally()
        self._counters: Any = _Fanout([self.tally] + ([counters] if counters is not None else []))
        self._lock = threading.Lock()  # guards everything below up to the flush lock
        self._buffer: list[LogBatch] = []
        self._buffered = 0  # rows in `_buffer`
        self._overflow: list[LogBatch] = []  # past the bound, waiting for the overflow writer (or a flush)
        self._overflow_rows = 0  # rows in `_overflow` plus those the overflow writer is spilling
        self._overflow_thread: threading.Thread | None = None
        self._overflow_wake = threading.Event()
        self._overflow_stop = threading.Event()
        self._closing = False
        self._unreported_overflow = 0
        self._unreported_drops = 0
        self._reported_at = -math.inf
        self._key_prefix = uuid.uuid4().hex[:16]  # row keys: this log's prefix + batch number + position
        self._next_batch = 0
        self._flush_lock = threading.Lock()
        self._db_down_until = 0.0

    # ------------------------------------------------------------------ request path

    def submit(self, batch: LogBatch) -> None:
        """Queue one request's rows; never blocks on I/O (past the bound: see `_overflow_locked`)."""
        n = len(batch.rows)
        if not n:
            return
        with self._lock:
            if self._buffered + n <= self.max_buffer_rows or not self._buffered:
                self._buffer.append(batch)
                self._buffered += n
                return
            start = self._overflow_locked(batch, n)
        if start is not None:
            start.start()
        self._overflow_wake.set()
        self._report_overflow()

    def _overflow_locked(self, batch: LogBatch, n: int) -> threading.Thread | None:
        """The buffer is full: hand the batch to the overflow writer, or drop and count it (lock held).

        Returns the overflow writer thread when it must be started (first overflow).
        """
        self._counters.overflowed(n)
        if self._overflow_rows + n > self.max_buffer_rows and self._overflow_rows:
            self._counters.dropped(n)
            self._unreported_drops += n
            return None
        self._overflow.append(batch)
        self._overflow_rows += n
        self._unreported_overflow += n
        if self._overflow_thread is not None or self._closing:
            return None
        self._overflow_thread = threading.Thread(target=self._overflow_writer, name="predlog-overflow", daemon=True)
        return self._overflow_thread

    @property
    def pending(self) -> int:
        """Rows held in memory: buffered, or past the bound and not yet spilled."""
        with self._lock:
            return self._buffered + self._overflow_rows

    # ------------------------------------------------------------------ overflow

    def _report_overflow(self, *, force: bool = False) -> None:
        """Log the rows past the bound since the last line (rate-limited unless `force`)."""
        with self._lock:
            overflowed, dropped = self._unreported_overflow, self._unreported_drops
            now = time.monotonic()
            if not (overflowed or dropped) or (not force and now - self._reported_at < OVERFLOW_REPORT_SECONDS):
                return
            self._unreported_overflow = self._unreported_drops = 0
            self._reported_at = now
        if dropped:
            log.error("prediction log: buffer full (%d rows) and its overflow not yet spilled: DROPPED %d rows; "
                      "%d rows handed to the overflow spill (counters retrain_predlog_rows_dropped, "
                      "retrain_predlog_buffer_overflow_rows)", self.max_buffer_rows, dropped, overflowed)
        else:
            log.warning("prediction log: buffer full (%d rows): %d rows handed to the overflow spill "
                        "(the flush is behind)", self.max_buffer_rows, overflowed)

    def _overflow_writer(self) -> None:
        """Thread: spill the rows past the bound while the flush is busy (e.g. stuck on a slow database)."""
        while True:
            self._overflow_wake.wait()
            self._overflow_wake.clear()
            if self._overflow_stop.is_set():
                return
            try:
                self._spill_overflow()
            except Exception:  # e.g. the spill disk is full: rows stay queued, later ones are dropped and counted
                log.exception("prediction log: spilling the buffer overflow failed; retrying")
                if self._overflow_stop.wait(max(self.retry_seconds, 0.5)):
                    return
                self._overflow_wake.set()
            self._report_overflow()

    def _spill_overflow(self) -> None:
        with self._lock:
            batches, self._overflow = self._overflow, []
            first = self._reserve_keys(len(batches))
        if not batches:
            return
        n = sum(len(b.rows) for b in batches)
        try:
            self.spill.write(self._keyed(batches, first))
        except BaseException:
            with self._lock:  # still counted in `_overflow_rows`
                self._overflow[:0] = batches
            raise
        with self._lock:
            self._overflow_rows -= n
        self._counters.spilled(n)

    def _stop_overflow_writer(self) -> None:
        with self._lock:
            self._closing = True
            thread = self._overflow_thread
        self._overflow_stop.set()
        self._overflow_wake.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=30.0)
            if thread.is_alive():
                with self._lock:
                    pending = self._overflow_rows - sum(len(b.rows) for b in self._overflow)
                log.error("prediction log: the overflow writer is still writing %d rows to %s at shutdown; "
                          "they are lost if the process exits first", pending, self.spill.path)

    # ------------------------------------------------------------------ flushing

    def _reserve_keys(self, n_batches: int) -> int:
        first, self._next_batch = self._next_batch, self._next_batch + n_batches
        return first

    def _keyed(self, batches: list[LogBatch], first: int) -> list[dict[str, Any]]:
        """Give each row without one its unique `row_key` (before it is first written or spilled); all rows."""
        rows: list[dict[str, Any]] = []
        for number, batch in enumerate(batches, start=first):
            for i, row in enumerate(batch.rows):
                if not row.get("row_key"):
                    row["row_key"] = f"{self._key_prefix}-{number:x}-{i}"
            rows.extend(batch.rows)
        return rows

    def _drain(self) -> tuple[list[LogBatch], int]:
        """Take the buffer and the overflow not yet taken by its writer; and the first batch number."""
        with self._lock:
            batches, self._buffer, self._buffered = self._buffer, [], 0
            if self._overflow:
                overflow, self._overflow = self._overflow, []
                self._overflow_rows -= sum(len(b.rows) for b in overflow)
                batches += overflow
            return batches, self._reserve_keys(len(batches))

    def _requeue(self, batches: list[LogBatch]) -> None:
        """Put batches that could be neither written nor spilled back in front of the buffer, within the bound."""
        kept: list[LogBatch] = []
        with self._lock:
            lost = 0
            for batch in batches:
                n = len(batch.rows)
                if self._buffered + n <= self.max_buffer_rows or not self._buffered:
                    kept.append(batch)
                    self._buffered += n
                else:
                    lost += n
            self._buffer[:0] = kept
            if lost:
                self._counters.dropped(lost)
                self._unreported_drops += lost

    def _insert(self, rows: list[dict[str, Any]], *, count: bool = False) -> int:
        """Insert in one transaction, skipping rows whose key is already there; rows inserted (if `count`)."""
        inserted = 0
        with transaction(self.sessions) as session:
            stmt = _insert_once(session.get_bind().dialect.name)
            if count:
                stmt = stmt.returning(Prediction.row_key)
            for i in range(0, len(rows), self.max_rows):
                chunk = rows[i : i + self.max_rows]
                result = session.execute(stmt, chunk)
                inserted += len(result.all()) if count else len(chunk)
        return inserted

    def _db_usable(self) -> bool:
        return time.monotonic() >= self._db_down_until

    def _mark_down(self, exc: BaseException) -> None:
        self._counters.write_failed()
        if self._db_usable():
            log.warning("prediction log: database write failed (%s); spilling to %s for %.1f s",
                        _first_line(exc)[:300], self.spill.path, self.retry_seconds)
        self._db_down_until = time.monotonic() + self.retry_seconds

    def flush_once(self, *, replay: bool = True, replay_budget_s: float | None = None) -> int:
        """Write what is buffered (or spill it); then replay spill files if the database answers.

        Returns the number of rows taken from the buffer. Runs in a worker thread.
        """
        with self._flush_lock:
            batches, first = self._drain()
            rows = self._keyed(batches, first)
            if batches and self.enrich is not None:
                try:
                    self.enrich(batches)
                except Exception:  # the shadow must never cost a logged prediction
                    log.exception("prediction log: enrich hook failed; logging without shadow scores")
            if rows:
                self._write_or_spill(batches, rows)
            self._report_overflow()
            if replay and self._db_usable():
                self._replay(replay_budget_s if replay_budget_s is not None else self.flush_seconds * 4)
            return len(rows)

    def _write_or_spill(self, batches: list[LogBatch], rows: list[dict[str, Any]]) -> None:
        if self._db_usable():
            try:
                self._insert(rows)
            except Exception as exc:
                if not is_data_error(exc):
                    self._mark_down(exc)
                else:
                    batches = self._write_each(batches, exc)
                    rows = [r for b in batches for r in b.rows]
                    if not rows:
                        return
            else:
                self._counters.written(len(rows))
                return
        try:
            self.spill.write(rows)
        except BaseException:
            self._requeue(batches)  # keep them for the next flush rather than lose them (within the bound)
            raise
        self._counters.spilled(len(rows))

    def _write_each(self, batches: list[LogBatch], exc: BaseException) -> list[LogBatch]:
        """The database rejected the flush's rows: write request by request; returns the batches left over.

        Rejected requests are left over (spilled, then quarantined by the replay with the database's
        reason), and so is everything after a failure that is not about the data.
        """
        log.warning("prediction log: the database rejected %d rows of %d requests (%s); writing them request "
                    "by request", sum(len(b.rows) for b in batches), len(batches), _first_line(exc)[:300])
        rejected: list[LogBatch] = []
        for i, batch in enumerate(batches):
            try:
                self._insert(batch.rows)
            except Exception as err:
                if is_data_error(err):
                    rejected.append(batch)
                    continue
                self._mark_down(err)
                return rejected + batches[i:]
            self._counters.written(len(batch.rows))
        return rejected

    def _replay(self, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        for path in self.spill.sealed():
            if time.monotonic() > deadline or not self._db_usable():
                return
            claimed = self.spill.claim(path)
            if claimed is None:
                continue
            try:
                rows = self.spill.read(claimed)
            except (SpillFileError, OSError) as exc:
                self._quarantine(claimed, f"unreadable: {_first_line(exc)}", None)
                continue
            try:
                inserted = self._insert(rows, count=True) if rows else 0
            except Exception as exc:
                if is_data_error(exc):
                    self._quarantine(claimed, f"rejected by the database: {_first_line(exc)}", len(rows))
                    continue
                SpillDir.release(claimed)
                self._mark_down(exc)
                return
            claimed.unlink()
            self._counters.replayed(inserted)
            self.tally._add("n_duplicates", len(rows) - inserted)
            if inserted < len(rows):
                log.info("prediction log: replayed %d spilled rows from %s (%d already in the table: skipped)",
                         inserted, path.name, len(rows) - inserted)
            else:
                log.info("prediction log: replayed %d spilled rows from %s", inserted, path.name)

    def _quarantine(self, claimed: Path, reason: str, rows: int | None) -> None:
        """Set a spill file with a data problem aside, so that it no longer blocks the files after it."""
        try:
            target = self.spill.quarantine(claimed, reason, rows=rows)
        except OSError:
            log.exception("prediction log: could not quarantine spill file %s (%s); it stays for a later replay",
                          claimed.name, reason)
            with contextlib.suppress(OSError):
                SpillDir.release(claimed)
            return
        self._counters.quarantined(1)
        log.error("prediction log: spill file %s (%s rows) quarantined to %s: %s; replaying the next files",
                  target.name, "?" if rows is None else rows, target.parent, reason)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `flush_seconds` until `stop` is set; then flush what is left (never cancelled)."""
        released = await asyncio.to_thread(self.spill.release_orphans)
        if released:
            log.info("prediction log: released %d spill files claimed by dead processes", released)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.flush_seconds)
            try:
                await asyncio.to_thread(self.flush_once)
            except Exception:  # e.g. the spill disk is full: keep the loop alive, rows stay buffered
                log.exception("prediction log: flush failed")
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Final flush on shutdown: write or spill everything buffered, replay once if possible."""
        self._stop_overflow_writer()
        self._db_down_until = 0.0
        self.flush_once(replay=True, replay_budget_s=5.0)
        if self.pending:  # rows submitted during the final flush
            self.flush_once(replay=False)
        self._report_overflow(force=True)
