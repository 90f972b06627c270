"""The prediction log: every served prediction goes to the SQL `predictions` table, in batches.

The request path only appends to an in-memory buffer (`submit`); a background task (`run`) drains
it every `serve_log_flush_seconds`, lets a hook add the shadow challenger's scores, and inserts the
rows in one transaction. When the database write fails, the batch is written to a spill file under
`RETRAIN_HOME/spill/` (temp file + fsync + atomic rename, one sealed file per batch), and later
flushes replay the spill files once the database answers again. Spill files written in the layout
of before migration 0003 replay too (`migrations.legacy_rows`). Nothing is dropped:

- a spill file is claimed by renaming it (one worker wins), inserted in one transaction, then
  deleted; a failed replay renames it back. A claim left by a dead process is released at start.
- on shutdown, set the stop event and await `run`: it finishes the flush in progress, then writes
  (or spills) whatever is still buffered. Cancelling the task mid-write lost rows in a trial.

Delivery is at-least-once: a crash between the replay's commit and the file's deletion replays
that file again.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.db import Prediction, transaction
from retrain.migrations.legacy_rows import upgrade_spill_row

log = logging.getLogger(__name__)

SPILL_SUFFIX = ".jsonl"
CLAIM_MARK = ".claimed-"
DATETIME_COLUMNS = ("predicted_at", "event_time")
COLUMNS = ("request_id", "model_name", "model_version", "predicted_at", "entity_key", "event_time", "attributes",
           "features", "missing_features", "score", "shadow_version", "shadow_score")


@dataclass
class LogBatch:
    """Rows of one request (dicts keyed by `COLUMNS`) and the feature matrix they were scored on."""

    rows: list[dict[str, Any]]
    matrix: np.ndarray | None = None


class LogCounters(Protocol):
    """Where the log reports what it did (the Prometheus counters in serving, plain ints in tests)."""

    def written(self, n: int) -> None: ...
    def spilled(self, n: int) -> None: ...
    def replayed(self, n: int) -> None: ...
    def write_failed(self) -> None: ...


@dataclass
class Tally:
    """Counts kept by the log itself (also the default `LogCounters`)."""

    n_written: int = 0
    n_spilled: int = 0
    n_replayed: int = 0
    n_failures: int = 0

    def written(self, n: int) -> None:
        self.n_written += n

    def spilled(self, n: int) -> None:
        self.n_spilled += n

    def replayed(self, n: int) -> None:
        self.n_replayed += n

    def write_failed(self) -> None:
        self.n_failures += 1


@dataclass
class _Fanout:
    targets: list[Any] = field(default_factory=list)

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            for target in self.targets:
                getattr(target, name)(*args)

        return call


def clean_features(names: list[str], values: Iterable[float]) -> dict[str, float | None]:
    """Feature values as JSON-safe floats (NaN -> None: neither JSON nor PostgreSQL take NaN)."""
    return {n: (None if v is None or not math.isfinite(v) else float(v)) for n, v in zip(names, values, strict=True)}


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for col in DATETIME_COLUMNS:
        if isinstance(out.get(col), datetime):
            out[col] = out[col].isoformat()
    return out


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = upgrade_spill_row(row)
    out = {k: row.get(k) for k in COLUMNS}
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
        with path.open(encoding="utf-8") as fh:
            return [_decode(json.loads(line)) for line in fh if line.strip()]


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
        enrich: Callable[[list[LogBatch]], None] | None = None,
        counters: LogCounters | None = None,
    ) -> None:
        self.sessions = sessions
        self.spill = SpillDir(spill_dir)
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.max_rows = max_rows
        self.enrich = enrich
        self.tally = Tally()
        self._counters: Any = _Fanout([self.tally] + ([counters] if counters is not None else []))
        self._buffer: list[LogBatch] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._db_down_until = 0.0

    # ------------------------------------------------------------------ request path

    def submit(self, batch: LogBatch) -> None:
        """Queue one request's rows; never blocks on I/O."""
        if batch.rows:
            with self._lock:
                self._buffer.append(batch)

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(len(b.rows) for b in self._buffer)

    # ------------------------------------------------------------------ flushing

    def _drain(self) -> list[LogBatch]:
        with self._lock:
            batches, self._buffer = self._buffer, []
        return batches

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with transaction(self.sessions) as session:
            for i in range(0, len(rows), self.max_rows):
                session.execute(insert(Prediction), rows[i : i + self.max_rows])

    def _db_usable(self) -> bool:
        return time.monotonic() >= self._db_down_until

    def _mark_down(self, exc: BaseException) -> None:
        self._counters.write_failed()
        if self._db_usable():
            log.warning("prediction log: database write failed (%s); spilling to %s for %.1f s",
                        str(exc).splitlines()[0][:300], self.spill.path, self.retry_seconds)
        self._db_down_until = time.monotonic() + self.retry_seconds

    def flush_once(self, *, replay: bool = True, replay_budget_s: float | None = None) -> int:
        """Write what is buffered (or spill it); then replay spill files if the database answers.

        Returns the number of rows taken from the buffer. Runs in a worker thread.
        """
        with self._flush_lock:
            batches = self._drain()
            if batches and self.enrich is not None:
                try:
                    self.enrich(batches)
                except Exception:  # the shadow must never cost a logged prediction
                    log.exception("prediction log: enrich hook failed; logging without shadow scores")
            rows = [r for b in batches for r in b.rows]
            if rows:
                self._write_or_spill(rows)
            if replay and self._db_usable():
                self._replay(replay_budget_s if replay_budget_s is not None else self.flush_seconds * 4)
            return len(rows)

    def _write_or_spill(self, rows: list[dict[str, Any]]) -> None:
        if self._db_usable():
            try:
                self._insert(rows)
            except Exception as exc:
                self._mark_down(exc)
            else:
                self._counters.written(len(rows))
                return
        try:
            self.spill.write(rows)
        except BaseException:
            with self._lock:  # keep them for the next flush rather than lose them
                self._buffer.insert(0, LogBatch(rows))
            raise
        self._counters.spilled(len(rows))

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
                if rows:
                    self._insert(rows)
            except Exception as exc:
                SpillDir.release(claimed)
                self._mark_down(exc)
                return
            claimed.unlink()
            self._counters.replayed(len(rows))
            log.info("prediction log: replayed %d spilled rows from %s", len(rows), path.name)

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
        self._db_down_until = 0.0
        self.flush_once(replay=True, replay_budget_s=5.0)
        if self.pending:  # rows submitted during the final flush
            self.flush_once(replay=False)
