"""Ingestion: validate a flights batch, quarantine what fails, land the rest idempotently.

Every received row ends up in exactly one place: landed in the offline store, quarantined with one
reason, or refused with the whole batch (not a flights table, unreadable, or the same content as an
earlier landed batch). `received = accepted + quarantined + refused` for every batch; `refused` is 0
unless the whole batch was refused. The rules live in `retrain.ingest_contract`.

Landing is stage -> commit -> publish: inside one database transaction the batch row (for its id),
its parquet parts and quarantine file written under staged names (`offline.stage`), its quarantined
rows and outcomes; then commit; then the files are renamed into place (`offline.publish`). Files
staged before a failure are removed, so a failed batch leaves neither a part nor a database row
behind (only a "failed" record saying why). A crash leaves at most staged files: of a batch that
never committed (nobody reads them; the next landing's sweep deletes them) or of a committed one
(readers find them staged; the sweep publishes them). Readers take only the database's landed
batches (`flight_delay.landed`), so no part is ever read twice or read without its batch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from flight_delay import data
from flight_delay.data import FLIGHTS_TABLE
from flight_delay.ingest_contract import (
    DELAY_RANGE,
    BatchRejected,
    Coerced,
    check_columns,
    coerce,
    content_hash,
    format_value,
    none_where,
    validate,
)
from flight_delay.landed import landed_parts, sweep, sweep_now
from retrain.core.config import Settings
from retrain.core.db import IngestionBatch, Outcome, QuarantinedRow, transaction
from retrain.core.jsonsafe import read_json_state, write_json_atomic
from retrain.features import offline

__all__ = [
    "BatchRejected",
    "IngestResult",
    "ReplayResult",
    "ingest_file",
    "ingest_frame",
    "ingest_outcomes",
    "landed_flight_ids",
    "member",
    "read_batch_file",
    "recorded_outcome_ids",
    "replay_until",
    "validate",
]

Progress = Callable[[str], None]
Status = Literal["landed", "duplicate", "rejected", "failed"]
OUTCOME_INPUT_COLUMNS: tuple[str, ...] = ("flight_id", "sched_dep", "landed_at", "arr_delay")
REQUIRED_INT = ("year", "month", "day", "sched_dep_time", "sched_arr_time", "flight", "hour", "minute")


class IngestResult(BaseModel):
    """What happened to one batch; `received == accepted + quarantined + refused` always."""

    batch_id: int | None = None
    kind: Literal["flights", "outcomes"] = "flights"
    source: str
    status: Status
    received: int = 0
    accepted: int = 0
    quarantined: int = 0
    refused: int = 0
    outcomes: int = 0
    duplicate: bool = False
    duplicate_of: int | None = None
    message: str = ""
    reasons: dict[str, int] = Field(default_factory=dict)
    extra_columns: list[str] = Field(default_factory=list)
    content_hash: str | None = None
    landed_path: str | None = None
    quarantine_path: str | None = None
    min_sched_dep: datetime | None = None
    max_sched_dep: datetime | None = None
    swept: dict[str, int] = Field(default_factory=dict)  # repairs of an interrupted landing, before this one


class ReplayResult(BaseModel):
    """What `replay_until` added: one flights batch and one outcomes batch at most."""

    until: datetime
    since: datetime | None = None
    released: int = 0
    flights: IngestResult | None = None
    outcome_batch: IngestResult | None = None
    swept: dict[str, int] = Field(default_factory=dict)  # repairs of an interrupted landing, before this one

    @property
    def received(self) -> int:
        return self.flights.received if self.flights else 0

    @property
    def accepted(self) -> int:
        return self.flights.accepted if self.flights else 0

    @property
    def quarantined(self) -> int:
        return (self.flights.quarantined if self.flights else 0) + (
            self.outcome_batch.quarantined if self.outcome_batch else 0
        )

    @property
    def outcomes(self) -> int:
        """Outcomes recorded: with the released flights plus matured ones for earlier flights."""
        return (self.flights.outcomes if self.flights else 0) + (
            self.outcome_batch.outcomes if self.outcome_batch else 0
        )

    @property
    def batch_ids(self) -> list[int]:
        return [r.batch_id for r in (self.flights, self.outcome_batch) if r is not None and r.batch_id is not None]

    def counts(self) -> dict[str, Any]:
        """The flat summary the CLI and the flow report."""
        return {
            "until": self.until.isoformat(),
            "released": self.released,
            "received": self.received,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "outcomes": self.outcomes,
            "batch_ids": self.batch_ids,
            **({"swept": self.swept} if self.swept else {}),
        }


# --------------------------------------------------------------------------- store lookups


_ID_CACHE: dict[tuple[str, str], tuple[list[tuple[str, int, int]], dict[str, int]]] = {}


def _part_ids(parts: list[Path], id_column: str, batch_column: str | None) -> Mapping[str, int]:
    """`id -> batch id` (or -1) over part files, kept per process and extended part by part.

    Parts are immutable once landed, so a day that adds one part to hundreds reads one part; a
    part whose stat signature changed, or a list that is not an extension of the cached one, is
    read afresh. The returned mapping is read-only and never changes afterwards.
    """
    if not parts:
        return MappingProxyType({})
    key = (str(parts[0].parent), f"{id_column}:{batch_column}")
    signatures = [offline.signature(p) for p in parts]
    cached = _ID_CACHE.get(key)
    if cached is not None and signatures == cached[0]:
        return MappingProxyType(cached[1])  # nothing new: the mapping handed out before
    grows = cached is not None and offline.extends(signatures, cached[0])
    start, ids = (len(cached[0]), dict(cached[1])) if grows and cached else (0, {})  # copy: old answers stay put
    columns = [id_column] + ([batch_column] if batch_column else [])
    frame = offline.read_parts(parts[start:], columns)
    if frame is not None:
        values = frame[id_column].to_numpy(dtype=object)
        batches = frame[batch_column].to_numpy(dtype="int64") if batch_column else np.full(len(frame), -1)
        ids.update(zip(values.tolist(), batches.tolist(), strict=True))
    offline.remember(_ID_CACHE, key, (signatures, ids))
    return MappingProxyType(ids)


def landed_flight_ids(settings: Settings, sessions: sessionmaker[Session]) -> Mapping[str, int]:
    """Flight ids already landed, each mapped to the batch that landed it.

    Only parts of batches the database records as landed count (a committed batch's part still
    staged included), so a staged part of a batch that never committed is never mistaken for
    ingested data, and one of a committed batch is never ingested again. Reads two columns only.
    """
    return _part_ids(landed_parts(settings, FLIGHTS_TABLE, sessions), "flight_id", "batch_id")


def recorded_outcome_ids(settings: Settings, sessions: sessionmaker[Session]) -> Mapping[str, int]:
    """Flight ids whose outcome is already recorded in the offline store (values are -1)."""
    return _part_ids(landed_parts(settings, offline.OUTCOMES, sessions), "flight_id", None)


def member(ids: pd.Series | np.ndarray, known: Mapping[str, int]) -> np.ndarray:
    """Boolean array: which of `ids` are keys of `known` (no hash table of `known` is rebuilt)."""
    values = ids.to_numpy(dtype=object) if isinstance(ids, pd.Series) else ids
    return np.fromiter((v in known for v in values), dtype=bool, count=len(values))


def _earlier_landed(session: Session, kind: str, digest: str) -> IngestionBatch | None:
    return session.scalars(
        select(IngestionBatch).where(
            IngestionBatch.kind == kind, IngestionBatch.content_hash == digest, IngestionBatch.status == "landed"
        ).order_by(IngestionBatch.id).limit(1)
    ).first()


# --------------------------------------------------------------------------- JSON / text helpers


def json_safe(value: object) -> Any:
    """A value as JSON can store it: NaN/NA -> None, numpy scalars -> Python, inf -> text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return None
        return v if math.isfinite(v) else str(v)
    if isinstance(value, str):
        return value
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return str(value)


def _raw_records(quarantine: pd.DataFrame, raw_columns: Sequence[str]) -> list[dict[str, Any]]:
    cols = {c: quarantine[c].to_numpy(dtype=object) for c in raw_columns}
    return [{c: json_safe(cols[c][i]) for c in raw_columns} for i in range(len(quarantine))]


def _as_text(values: pd.Series) -> pd.Series:
    safe = [json_safe(v) for v in values.to_numpy(dtype=object)]
    return pd.Series([None if v is None else str(v) for v in safe], index=values.index, dtype="string")


def _reason_counts(quarantine: pd.DataFrame) -> dict[str, int]:
    if quarantine.empty:
        return {}
    keys = quarantine["field"].astype(str) + ":" + quarantine["rule"].astype(str)
    return {str(k): int(v) for k, v in keys.value_counts().items()}


def _naive_utc_text(values: pd.Series) -> list[str]:
    """UTC instants as SQLAlchemy's SQLite DATETIME text (`YYYY-MM-DD HH:MM:SS.ffffff`)."""
    arr = values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    text = np.datetime_as_string(arr, unit="us")
    return pd.Series(text).str.replace("T", " ", regex=False).tolist()


def _py_utc(value: Any) -> datetime | None:
    if value is None or pd.isna(value):
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


# --------------------------------------------------------------------------- SQL bulk writes


def _insert_outcomes(session: Session, outcomes: pd.DataFrame, batch_id: int, model_name: str) -> None:
    """Bulk insert outcome rows inside the session's transaction, as the use case `model_name`'s labels.

    The SQL row is generic: flight_id -> entity_key, sched_dep -> event_time, landed_at ->
    available_at, late -> label (0.0/1.0), arr_delay -> detail {"arr_delay": ...}.
    A year is 327k rows: SQLite goes through the driver's executemany and PostgreSQL (psycopg)
    through COPY, each about 5x faster than Core's executemany; other backends use Core.
    """
    if outcomes.empty:
        return
    conn = session.connection()
    columns = "model_name, entity_key, event_time, available_at, label, detail, batch_id"
    rows = list(
        zip(
            [model_name] * len(outcomes),
            outcomes["flight_id"].astype(str).tolist(),
            _naive_utc_text(outcomes["sched_dep"]),
            _naive_utc_text(outcomes["landed_at"]),
            outcomes["late"].astype(bool).astype("float64").tolist(),
            [json.dumps({"arr_delay": a}, allow_nan=False) for a in outcomes["arr_delay"].astype("float64").tolist()],
            [int(batch_id)] * len(outcomes),
            strict=True,
        )
    )
    if conn.dialect.name == "sqlite":
        # the text format SQLAlchemy's SQLite DATETIME stores (a unit test reads it back via the ORM)
        conn.exec_driver_sql(f"INSERT INTO outcomes ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur, cur.copy(f"COPY outcomes ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    params = [
        {"model_name": m, "entity_key": k, "event_time": _py_utc(et), "available_at": _py_utc(av), "label": lb,
         "detail": json.loads(d), "batch_id": b}
        for m, k, et, av, lb, d, b in rows
    ]
    session.execute(insert(Outcome), params)


def _storable_id(value: object) -> str | None:
    """A flight id fit for the 64-char column; ids built from garbage (too long, control chars) are not."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if len(text) <= 64 and text.isprintable() else None


def _insert_quarantine(session: Session, quarantine: pd.DataFrame, raw_columns: Sequence[str], batch_id: int) -> None:
    if quarantine.empty:
        return
    raws = _raw_records(quarantine, raw_columns)
    params = [
        {
            "batch_id": batch_id,
            "row_number": int(rn),
            "row_key": _storable_id(fid),
            "field": str(field),
            "rule": str(rule),
            "reason": str(reason),
            "raw": raw,
        }
        for rn, fid, field, rule, reason, raw in zip(
            quarantine["row_number"], quarantine["flight_id"], quarantine["field"], quarantine["rule"],
            quarantine["reason"], raws, strict=True,
        )
    ]
    session.execute(insert(QuarantinedRow), params)


def _quarantine_file(quarantine: pd.DataFrame, raw_columns: Sequence[str]) -> pd.DataFrame:
    """Quarantine parquet: reason columns plus every received column as text (mixed types fit)."""
    out = quarantine[["row_number", "flight_id", "field", "rule", "reason"]].copy()
    out["flight_id"] = out["flight_id"].astype("string")
    for col in raw_columns:
        out[col] = _as_text(quarantine[col])
    return out


# --------------------------------------------------------------------------- recording


def _record_refusal(
    sessions: sessionmaker[Session], *, kind: str, source: str, status: Status, error: str, received: int,
    digest: str | None,
) -> int:
    with transaction(sessions) as session:
        batch = IngestionBatch(
            kind=kind, source=source[:1024], status=status, received=received, accepted=0, quarantined=0,
            outcomes=0, error=error, content_hash=digest,
        )
        session.add(batch)
        session.flush()
        return int(batch.id)


def _duplicate_result(
    sessions: sessionmaker[Session], earlier: IngestionBatch, *, kind: Literal["flights", "outcomes"], source: str,
    received: int, digest: str, extra: list[str],
) -> IngestResult:
    message = (
        f"same content as batch {earlier.id} (landed {earlier.created_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"{earlier.accepted} rows accepted): nothing added"
    )
    batch_id = _record_refusal(
        sessions, kind=kind, source=source, status="duplicate", error=message, received=received, digest=digest
    )
    return IngestResult(
        batch_id=batch_id, kind=kind, source=source, status="duplicate", received=received, refused=received,
        duplicate=True, duplicate_of=earlier.id, message=message, extra_columns=extra, content_hash=digest,
    )


def _landed_message(result: IngestResult) -> str:
    parts = [f"landed {result.accepted} of {result.received} rows"]
    if result.quarantined:
        top = ", ".join(f"{k}={v}" for k, v in sorted(result.reasons.items(), key=lambda kv: -kv[1])[:5])
        parts.append(f"quarantined {result.quarantined} ({top})")
    parts.append(f"{result.outcomes} outcomes recorded")
    if result.extra_columns:
        parts.append(f"ignored extra columns: {', '.join(result.extra_columns)}")
    return "; ".join(parts)


def _land(
    *, settings: Settings, sessions: sessionmaker[Session], kind: Literal["flights", "outcomes"], source: str,
    digest: str, received: int, extra: list[str], raw_columns: Sequence[str], quarantine: pd.DataFrame,
    build_parts: Callable[[int], tuple[pd.DataFrame | None, pd.DataFrame]],
) -> IngestResult:
    """Create the batch row, stage its parts and quarantine file, commit, publish; undo files on failure."""
    finals: list[Path] = []  # where the files go once the batch committed
    staged: list[Path] = []
    try:
        with transaction(sessions) as session:
            batch = IngestionBatch(kind=kind, source=source[:1024], status="landed", content_hash=digest,
                                   received=received)
            session.add(batch)
            session.flush()
            batch_id = int(batch.id)
            flights, outcomes = build_parts(batch_id)
            landed_path: Path | None = None
            files: list[tuple[pd.DataFrame, Path]] = []
            if flights is not None and len(flights):
                landed_path = offline.part_path(settings, FLIGHTS_TABLE, batch_id)
                files.append((flights, landed_path))
            if len(outcomes):
                files.append((outcomes, offline.part_path(settings, offline.OUTCOMES, batch_id)))
                if kind == "outcomes":
                    landed_path = files[-1][1]
            q_path: Path | None = None
            if len(quarantine):
                q_path = offline.quarantine_path(settings, batch_id)
                files.append((_quarantine_file(quarantine, raw_columns), q_path))
            for frame, final in files:
                staged.append(offline.stage(frame, final))
                finals.append(final)
            _insert_quarantine(session, quarantine, raw_columns, batch_id)
            _insert_outcomes(session, outcomes, batch_id, settings.model_name)
            accepted = len(flights) if kind == "flights" and flights is not None else len(outcomes)
            sched = flights["sched_dep"] if kind == "flights" and flights is not None else outcomes["sched_dep"]
            batch.accepted = accepted
            batch.quarantined = len(quarantine)
            batch.outcomes = len(outcomes)
            batch.landed_path = str(landed_path) if landed_path else None
            batch.min_event_time = _py_utc(sched.min()) if len(sched) else None
            batch.max_event_time = _py_utc(sched.max()) if len(sched) else None
            result = IngestResult(
                batch_id=batch_id, kind=kind, source=source, status="landed", received=received, accepted=accepted,
                quarantined=len(quarantine), outcomes=len(outcomes), reasons=_reason_counts(quarantine),
                extra_columns=extra, content_hash=digest, landed_path=batch.landed_path,
                quarantine_path=str(q_path) if q_path else None, min_sched_dep=batch.min_event_time,
                max_sched_dep=batch.max_event_time,
            )
            result.message = _landed_message(result)
            offline.crashpoint("staged")  # files staged, transaction open
    except Exception as err:
        for path in staged:
            path.unlink(missing_ok=True)
        try:
            _record_refusal(sessions, kind=kind, source=source, status="failed",
                            error=f"{type(err).__name__}: {err}", received=received, digest=digest)
        except Exception as record_err:  # the database may be what failed: keep the original error
            err.add_note(f"also failed to record the failed batch: {record_err}")
        raise
    except BaseException:
        for path in staged:
            path.unlink(missing_ok=True)
        raise
    offline.crashpoint("committed")  # committed, files still staged
    offline.publish(finals)
    offline.crashpoint("published")
    if result.received != result.accepted + result.quarantined + result.refused:
        raise AssertionError(f"batch {result.batch_id} does not reconcile: {result}")
    return result


# --------------------------------------------------------------------------- flights


def _landing_frame(valid: pd.DataFrame, batch_id: int) -> pd.DataFrame:
    """Canonical landed columns plus `flight_id`, `sched_dep`, `landed_at` (as `data.enrich_flights`)."""
    out = pd.DataFrame(index=valid.index)
    for col in data.FLIGHT_COLUMNS:
        out[col] = valid[col]
    for col in REQUIRED_INT:
        out[col] = out[col].astype("int64")
    out["time_hour"] = out["time_hour"].astype("datetime64[us, UTC]")
    out["flight_id"] = valid["flight_id"]
    # enrich_flights would recompute flight_id as Python strings (0.8 s on a year): same formula here,
    # pinned equal to data.enrich_flights by a unit test.
    out["sched_dep"] = (out["time_hour"] + pd.to_timedelta(out["minute"].astype("float64"), unit="m")).dt.floor("us")
    out["landed_at"] = data.landed_at(out).astype("datetime64[us, UTC]")
    out["sched_dep"] = out["sched_dep"].astype("datetime64[us, UTC]")
    out["batch_id"] = np.int64(batch_id)
    out["batch_row"] = valid["row_number"].astype("int64")
    return out


def _outcome_frame(frame: pd.DataFrame, batch_id: int, threshold: float) -> pd.DataFrame:
    out = data.outcomes_of(frame, threshold)
    out["sched_dep"] = out["sched_dep"].astype("datetime64[us, UTC]")
    out["landed_at"] = out["landed_at"].astype("datetime64[us, UTC]")
    out["flight_id"] = out["flight_id"].astype("string")
    out["batch_id"] = np.int64(batch_id)
    return out


def ingest_frame(
    df: pd.DataFrame, *, settings: Settings, sessions: sessionmaker[Session], source: str = "dataframe",
    progress: Progress | None = None,
) -> IngestResult:
    """Validate one flights batch and land its valid rows; raises `BatchRejected` for a non-flights table."""
    say = progress or (lambda _step: None)
    try:
        extra = check_columns(df)
    except BatchRejected as err:
        received = len(df) if isinstance(df, pd.DataFrame) else 0
        err.batch_id = _record_refusal(sessions, kind="flights", source=source, status="rejected", error=str(err),
                                       received=received, digest=None)
        raise
    raw = df.reset_index(drop=True)
    with offline.ingest_lock(settings):
        swept = sweep(settings, sessions).counts()
        say("checking the input contract")
        co: Coerced = coerce(raw)
        digest = content_hash(raw, coerced=co)
        with sessions() as session:
            earlier = _earlier_landed(session, "flights", digest)
        if earlier is not None:
            return _duplicate_result(sessions, earlier, kind="flights", source=source, received=len(raw),
                                     digest=digest, extra=extra).model_copy(update={"swept": swept})
        say("reading already-ingested flight ids")
        landed = landed_flight_ids(settings, sessions)
        say("validating rows")
        valid, quarantine = validate(raw, landed=landed, coerced=co)
        say(f"landing {len(valid):,} rows, quarantining {len(quarantine):,}")

        def build(batch_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
            flights = _landing_frame(valid, batch_id)
            return flights, _outcome_frame(flights, batch_id, settings.delay_threshold_minutes)

        result = _land(settings=settings, sessions=sessions, kind="flights", source=source, digest=digest,
                       received=len(raw), extra=extra, raw_columns=[str(c) for c in raw.columns],
                       quarantine=quarantine, build_parts=build)
        return result.model_copy(update={"swept": swept})


def read_batch_file(path: str | Path) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or parquet file; anything else is `BatchRejected`."""
    p = Path(path)
    if not p.exists():
        raise BatchRejected(f"cannot read {p}: no such file")
    if not p.is_file():
        raise BatchRejected(f"cannot read {p}: not a regular file")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic == b"PAR1":
            return pd.read_parquet(p)
        if p.suffix.lower() in (".parquet", ".pq"):
            raise BatchRejected(f"cannot read {p}: not a parquet file (no PAR1 header)")
        return pd.read_csv(p, low_memory=False)
    except BatchRejected:
        raise
    except Exception as err:  # parser, decoding, Arrow and OS errors all mean "not a readable table"
        raise BatchRejected(f"cannot read {p} as CSV or parquet: {type(err).__name__}: {err}") from err


def _file_digest(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def ingest_file(
    path: str | Path, *, settings: Settings, sessions: sessionmaker[Session], progress: Progress | None = None,
) -> IngestResult:
    """Ingest a CSV/parquet flights file; an unreadable or non-flights file is recorded and refused."""
    p = Path(path)
    source = str(p.resolve()) if p.exists() else str(p)
    (progress or (lambda _s: None))(f"reading {p.name}")
    try:
        df = read_batch_file(p)
    except BatchRejected as err:
        err.batch_id = _record_refusal(sessions, kind="flights", source=source, status="rejected", error=str(err),
                                       received=0, digest=_file_digest(p) if p.is_file() else None)
        raise
    return ingest_frame(df, settings=settings, sessions=sessions, source=source, progress=progress)


# --------------------------------------------------------------------------- outcomes


def _utc_or_nat(values: pd.Series) -> pd.Series:
    """Timestamps as UTC; unparseable text becomes NaT (reported as a type failure)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values.dtype):
        return pd.to_datetime(values, utc=True)
    return pd.to_datetime(values.astype(object), utc=True, errors="coerce", format="ISO8601")


def _validate_outcomes(
    df: pd.DataFrame, landed: Mapping[str, int], recorded: Mapping[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Outcome rows in order of rules: presence/type, range, known flight, not yet recorded."""
    raw = df.reset_index(drop=True)
    n = len(raw)
    fid = pd.Series(none_where(raw["flight_id"].to_numpy(dtype=object), raw["flight_id"].notna().to_numpy()))
    sched = _utc_or_nat(raw["sched_dep"])
    landed_at = _utc_or_nat(raw["landed_at"])
    delay = pd.to_numeric(raw["arr_delay"], errors="coerce").astype("float64")
    lo, hi = DELAY_RANGE
    known = member(fid.to_numpy(), landed)
    checks: list[tuple[str, str, str, np.ndarray, pd.Series]] = [
        ("flight_id", "not_null", "must not be null", fid.isna().to_numpy(), raw["flight_id"]),
        ("sched_dep", "type", "must be a timestamp", sched.isna().to_numpy(), raw["sched_dep"]),
        ("landed_at", "type", "must be a timestamp", landed_at.isna().to_numpy(), raw["landed_at"]),
        ("arr_delay", "type", "must be a finite number", ~np.isfinite(delay.to_numpy()), raw["arr_delay"]),
        ("arr_delay", "range", f"must be between {lo:g} and {hi:g} minutes", ~delay.between(lo, hi).to_numpy(),
         delay),
        ("landed_at", "after_sched_dep", "must be after sched_dep", ~(landed_at > sched).to_numpy(), landed_at),
        ("flight_id", "unknown_flight", "must be a flight that was ingested", ~known, fid),
    ]
    first = np.full(n, -1)
    reasons = np.full(n, None, dtype=object)
    fields = np.full(n, None, dtype=object)
    rules = np.full(n, None, dtype=object)
    for field, rule, text, bad, shown in checks:
        rows = np.flatnonzero(bad & (first < 0))
        first[rows] = 1
        fields[rows], rules[rows] = field, rule
        reasons[rows] = [f"{field}: {text} (got {format_value(v)})" for v in shown.to_numpy(dtype=object)[rows]]
    ok = np.flatnonzero(first < 0)
    ids_ok = fid.to_numpy()[ok]
    first_pos = pd.Series(ok).groupby(ids_ok, sort=False).transform("min").to_numpy()
    again = first_pos != ok
    stored = member(ids_ok, recorded) & ~again
    for mask, text in ((again, "duplicate of row {p} in this batch"), (stored, "outcome already recorded")):
        rows = ok[mask]
        first[rows] = 1
        fields[rows], rules[rows] = "flight_id", "duplicate"
        reasons[rows] = [
            f"flight_id: {text.format(p=int(p))} (got {v!r})"
            for p, v in zip(first_pos[mask], ids_ok[mask], strict=True)
        ]
    bad_rows = np.flatnonzero(first >= 0)
    quarantine = pd.concat(
        [
            pd.DataFrame({"row_number": bad_rows.astype("int64"), "flight_id": fid.to_numpy()[bad_rows],
                          "field": fields[bad_rows], "rule": rules[bad_rows], "reason": reasons[bad_rows]}),
            raw.iloc[bad_rows].reset_index(drop=True).rename(columns=lambda c: f"raw_{c}" if c in (
                "row_number", "flight_id", "field", "rule", "reason") else str(c)),
        ],
        axis=1,
    )
    good = np.flatnonzero(first < 0)
    valid = pd.DataFrame({
        "flight_id": fid.to_numpy()[good], "sched_dep": sched.to_numpy()[good],
        "landed_at": landed_at.to_numpy()[good], "arr_delay": delay.to_numpy()[good],
    })
    valid["sched_dep"] = pd.to_datetime(valid["sched_dep"], utc=True)
    valid["landed_at"] = pd.to_datetime(valid["landed_at"], utc=True)
    return valid, quarantine


def _outcomes_digest(df: pd.DataFrame) -> str:
    cols = sorted(OUTCOME_INPUT_COLUMNS)
    h = pd.util.hash_pandas_object(df[cols].astype(str), index=False).to_numpy()
    return hashlib.sha256(b"outcomes-batch-v1:" + str(len(df)).encode() + np.sort(h).tobytes()).hexdigest()


def ingest_outcomes(
    outcomes: pd.DataFrame, *, settings: Settings, sessions: sessionmaker[Session], source: str = "outcomes",
) -> IngestResult:
    """Record outcomes that matured for flights landed earlier with blank outcome columns.

    Input columns: flight_id, sched_dep, landed_at, arr_delay (as `ReplayClock.outcomes_between`);
    `late` is recomputed with `settings.delay_threshold_minutes`. Unknown flights and outcomes
    already recorded are quarantined, never dropped.
    """
    missing = [c for c in OUTCOME_INPUT_COLUMNS if c not in outcomes.columns]
    if missing:
        err = BatchRejected(f"not an outcomes table: missing required columns: {', '.join(missing)}", missing=missing)
        err.batch_id = _record_refusal(sessions, kind="outcomes", source=source, status="rejected", error=str(err),
                                       received=len(outcomes), digest=None)
        raise err
    raw = outcomes.reset_index(drop=True)
    extra = [str(c) for c in raw.columns if c not in OUTCOME_INPUT_COLUMNS]
    with offline.ingest_lock(settings):
        swept = sweep(settings, sessions).counts()
        digest = _outcomes_digest(raw)
        with sessions() as session:
            earlier = _earlier_landed(session, "outcomes", digest)
        if earlier is not None:
            return _duplicate_result(sessions, earlier, kind="outcomes", source=source, received=len(raw),
                                     digest=digest, extra=extra).model_copy(update={"swept": swept})
        valid, quarantine = _validate_outcomes(
            raw, landed_flight_ids(settings, sessions), recorded_outcome_ids(settings, sessions)
        )

        def build(batch_id: int) -> tuple[None, pd.DataFrame]:
            out = valid.copy()
            out["late"] = out["arr_delay"] > settings.delay_threshold_minutes
            out["sched_dep"] = out["sched_dep"].astype("datetime64[us, UTC]")
            out["landed_at"] = out["landed_at"].astype("datetime64[us, UTC]")
            out["flight_id"] = out["flight_id"].astype("string")
            out["batch_id"] = np.int64(batch_id)
            return None, out[["flight_id", "sched_dep", "landed_at", "arr_delay", "late", "batch_id"]]

        result = _land(settings=settings, sessions=sessions, kind="outcomes", source=source, digest=digest,
                       received=len(raw), extra=extra, raw_columns=[str(c) for c in raw.columns],
                       quarantine=quarantine, build_parts=build)
        return result.model_copy(update={"swept": swept})


# --------------------------------------------------------------------------- replay


REPLAY_SOURCE = "replay:"
REPLAY_MARK = "replay_watermark.json"  # {"until", "last_batch"}: how far the replay got, and the batch state then


def last_landed_sched_dep(sessions: sessionmaker[Session], *, replay_only: bool = False) -> datetime | None:
    """Latest scheduled departure among landed flights batches (optionally replay batches only)."""
    query = select(func.max(IngestionBatch.max_event_time)).where(
        IngestionBatch.kind == "flights", IngestionBatch.status == "landed"
    )
    if replay_only:
        query = query.where(IngestionBatch.source.startswith(REPLAY_SOURCE))
    with sessions() as session:
        return session.scalar(query)


def replay_until(
    settings: Settings, session_factory: sessionmaker[Session], until: datetime | pd.Timestamp | str,
    clock: data.ReplayClock | None = None, progress: Progress | None = None,
) -> ReplayResult:
    """Ingest every flight the replay clock has released by `until`, plus outcomes matured by then.

    The replay resumes at its own watermark (latest departure landed by an earlier replay batch),
    not at the latest departure of any batch: a file that covered part of a day must not hide the
    rest of that day from the replay. Flights already landed (by any batch) and outcomes already
    recorded are skipped, so a second call with the same `until` adds nothing and creates no batch.
    A call for a time the replay already reached, with no batch landed since, returns at once
    without loading the 2013 data (RETRAIN_HOME/replay_watermark.json holds that watermark).
    """
    say = progress or (lambda _s: None)
    until_ts = data.to_utc(until)
    swept = sweep_now(settings, session_factory).counts()  # a crash mid-landing leaves staged parts
    mark_path = settings.home / REPLAY_MARK
    mark = read_json_state(mark_path)
    landed_state = _last_landed_batch(session_factory)
    reached = data.to_utc(mark["until"]) if mark is not None and mark.get("last_batch") == landed_state else None
    if reached is not None and reached >= until_ts:
        say(f"replay already reached {reached.isoformat()} and nothing landed since: nothing to do")
        return ReplayResult(until=until_ts.to_pydatetime(), swept=swept,
                            since=last_landed_sched_dep(session_factory, replay_only=True))
    if clock is None:
        say("loading the 2013 flights for the replay clock")
        clock = data.ReplayClock()
    since = last_landed_sched_dep(session_factory, replay_only=True)
    released = clock.flights_between(since, until_ts.to_pydatetime())
    landed = landed_flight_ids(settings, session_factory)
    fresh = released[~member(released["flight_id"], landed)]
    result = ReplayResult(until=until_ts.to_pydatetime(), since=since, released=len(fresh), swept=swept)
    label = until_ts.isoformat()
    if len(fresh):
        result.flights = ingest_frame(fresh[list(data.FLIGHT_COLUMNS)], settings=settings, sessions=session_factory,
                                      source=f"{REPLAY_SOURCE}{label}", progress=progress)
        landed = landed_flight_ids(settings, session_factory)
    say("collecting matured outcomes")
    # With a valid watermark every outcome that matured before it is already recorded (or its flight
    # never landed), and flights landed now depart after it: only the outcomes since matter.
    matured = clock.outcomes_between(reached.to_pydatetime() if reached is not None else None,
                                     until_ts.to_pydatetime(), settings.delay_threshold_minutes)
    recorded = recorded_outcome_ids(settings, session_factory)
    todo = matured[member(matured["flight_id"], landed) & ~member(matured["flight_id"], recorded)]
    if len(todo):
        say(f"recording {len(todo):,} matured outcomes")
        result.outcome_batch = ingest_outcomes(todo[list(OUTCOME_INPUT_COLUMNS)], settings=settings,
                                               sessions=session_factory, source=f"replay-outcomes:{label}")
    write_json_atomic(mark_path, {"until": until_ts.isoformat(), "last_batch": _last_landed_batch(session_factory)})
    return result


def _last_landed_batch(sessions: sessionmaker[Session]) -> int | None:
    """Id of the newest landed batch: the replay watermark is valid only while this is unchanged."""
    with sessions() as session:
        return session.scalar(select(func.max(IngestionBatch.id)).where(IngestionBatch.status == "landed"))
