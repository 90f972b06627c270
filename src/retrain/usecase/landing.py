"""Landing a use case's rows as time passes: the replay that feeds its own Feast repository.

A row lands once its label has matured (`label.delay_hours` after its time, or its `available_col`):
that is when the history holds it whole. Each call lands what matured since the last one as one
immutable parquet part, records the batch, its quarantined rows (against `contract.yaml` when the
use case has one) and the outcomes in the system of record, and rebuilds the feature tables from
everything landed, so a feature table never holds what was not known by then.

One landing is stage -> commit -> publish (`retrain.features.offline`): the part is written under a
staged name inside the transaction that records the batch, its quarantined rows and outcomes; the
part is renamed into place after the commit. The database is the record of what landed: the replay
resumes after the newest landed batch's `until` (its source), `landed_rows` reads the parts of the
landed batches only, and the sweep at the start of each landing deletes a staged part whose batch
never committed and publishes one whose batch did. So a crash at any step lands each row once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import func, insert, select

from retrain.core.config import Settings
from retrain.core.db import IngestionBatch, Outcome, QuarantinedRow, transaction
from retrain.core.jsonsafe import json_safe, read_json_state, write_json_atomic
from retrain.core.locks import named_lock
from retrain.features import offline
from retrain.features.offline import crashpoint, read_parts
from retrain.features.repair import SweepReport
from retrain.features.repair import sweep as sweep_folder
from retrain.usecase import featurestore as FS
from retrain.usecase.catalog import UseCaseError, load_callable
from retrain.usecase.labels import known_at, label_values
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

MARKER = "landed.json"  # {"until", "rows", "last_batch"}: how far the replay got, valid while last_batch is newest
SOURCE = "replay until "  # a landed batch's source: SOURCE + the `until` it landed up to


@dataclass(frozen=True)
class LandResult:
    """What one replay step landed."""

    usecase: str
    until: str
    received: int
    landed: int
    quarantined: int
    total_landed: int
    batch_id: int | None
    tables: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    swept: dict[str, int] = field(default_factory=dict)  # repairs of an interrupted landing, before this one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raw_dir(settings: Settings, spec: UseCaseSpec) -> Path:
    """Landed raw parts of a use case."""
    return FS.tables_dir(settings, spec) / "raw"


def part_path(settings: Settings, spec: UseCaseSpec, batch_id: int) -> Path:
    """The raw part of one landed batch."""
    return raw_dir(settings, spec) / f"part-{batch_id:06d}.parquet"


def _kind(spec: UseCaseSpec) -> str:
    return spec.name[:32]


def _landed_ids(session: Session, spec: UseCaseSpec) -> list[int]:
    """Ids of the use case's landed batches that own a raw part (accepted rows), in landing order."""
    return list(session.scalars(select(IngestionBatch.id).where(
        IngestionBatch.kind == _kind(spec), IngestionBatch.status == "landed", IngestionBatch.accepted > 0,
    ).order_by(IngestionBatch.id)))


def landed_rows(settings: Settings, spec: UseCaseSpec, sessions: sessionmaker[Session] | None = None) -> pd.DataFrame:
    """Every row of the batches the database records as landed, in landing order (empty frame when
    nothing landed); parts on disk that no landed batch records are never read."""
    with (sessions or offline.sessions_for(settings))() as session:
        ids = _landed_ids(session, spec)
    frame = read_parts([part_path(settings, spec, i) for i in ids])
    return frame if frame is not None else pd.DataFrame()


def sweep(spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session]) -> SweepReport:
    """Make the use case's raw parts agree with its landed batches (`repair.sweep`): publish a part
    whose batch committed, delete one whose batch never did, set aside a part no batch records.
    Takes the use case's ingest lock (waits for a landing under way)."""
    with _ingest_lock(settings, spec):
        return _sweep(spec, settings, sessions)


def _sweep(spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session]) -> SweepReport:
    with sessions() as session:
        ids = set(_landed_ids(session, spec))
    return sweep_folder(raw_dir(settings, spec), ids).logged(spec.name)


def _ingest_lock(settings: Settings, spec: UseCaseSpec) -> Any:
    return named_lock(settings, f"ingest:{spec.name}", settings.offline_dir / f".ingest-{spec.name}.lock")


def _replayed(sessions: sessionmaker[Session], spec: UseCaseSpec) -> tuple[int | None, pd.Timestamp | None, int]:
    """(newest landed batch id, the `until` it landed up to, rows landed in all) from the database."""
    landed = (IngestionBatch.kind == _kind(spec), IngestionBatch.status == "landed")
    with sessions() as session:
        newest = session.scalar(select(func.max(IngestionBatch.id)).where(*landed))
        source = session.scalar(select(IngestionBatch.source).where(*landed, IngestionBatch.source.startswith(SOURCE))
                                .order_by(IngestionBatch.id.desc()).limit(1))
        total = session.scalar(select(func.coalesce(func.sum(IngestionBatch.accepted), 0)).where(*landed))
    until = pd.Timestamp(source.removeprefix(SOURCE)) if source is not None else None
    return newest, until, int(total or 0)


def data_start(settings: Settings, spec: UseCaseSpec) -> pd.Timestamp:
    """Where a fresh feature view's materialization starts: a week before the first landed row (feature
    tables stamp rows up to a week before the events they serve, e.g. lagged demand)."""
    rows = landed_rows(settings, spec)
    if rows.empty:
        raise UseCaseError(f"{spec.name}: nothing landed yet; run `retrain --usecase {spec.name} ingest --until "
                           "DATE` first")
    return pd.to_datetime(rows[spec.data.time_col], utc=True).min() - pd.Timedelta(days=7)


def _row_ids(spec: UseCaseSpec, rows: pd.DataFrame) -> pd.Series:
    assert spec.feast is not None
    ids = load_callable(spec, spec.feast.entity_rows)(rows)[FS.ROW_ID]
    return pd.Series(ids.astype(str).to_numpy(), index=rows.index)


def _contract_check(spec: UseCaseSpec, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(accepted rows, rejections) against the folder's contract.yaml; no contract: all accepted."""
    path = spec.folder / "contract.yaml" if spec.folder else None
    if path is None or not path.is_file():
        return rows, []
    import yaml

    from retrain.usecase.batch_check import check_batch
    from retrain.usecase.contract import DataContract

    contract = DataContract.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    checked = check_batch(rows.reset_index(drop=True), contract)
    return rows.iloc[checked.accepted.index.to_numpy()], checked.rejected


def replay_until(spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session], until: Any,
                 *, raw: pd.DataFrame | None = None) -> LandResult:
    """Land every row of the use case's history whose label matured in (last landing, `until`].

    The last landing is the marker's `until` while the newest landed batch is the one it names, else
    the newest landed batch's own `until` (a crash after the commit left the marker behind).
    """
    if spec.feast is None:
        raise UseCaseError(f"{spec.name}: no feast section; its data path is the engine's (retrain ingest)")
    end = pd.Timestamp(until)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    settings.ensure_dirs()
    marker = FS.tables_dir(settings, spec) / MARKER
    with _ingest_lock(settings, spec):
        swept = _sweep(spec, settings, sessions).counts()
        state = read_json_state(marker) or {}
        newest, newest_until, total = _replayed(sessions, spec)
        current = bool(state.get("until")) and state.get("last_batch") == newest
        since = pd.Timestamp(state["until"]) if current else newest_until
        if since is not None and end <= since:
            tables: dict[str, int] = {}
            if not current and total:  # a landing committed but stopped before its tables and marker
                tables = FS.write_tables(spec, settings, landed_rows(settings, spec, sessions))
                write_json_atomic(marker, {"until": since.isoformat(), "rows": total, "last_batch": newest})
            return LandResult(spec.name, end.isoformat(), 0, 0, 0, total, None, tables, swept=swept)
        raw = FS.raw_rows(spec) if raw is None else raw
        ready = known_at(spec, raw)
        pick = (ready <= end) if since is None else (ready > since) & (ready <= end)
        new = raw[pick.to_numpy()]
        accepted, rejected = _contract_check(spec, new)
        batch_id = _land(spec, settings, sessions, new, accepted, rejected, end) if len(new) else None
        newest = batch_id if batch_id is not None else newest
        total += len(accepted)
        write_json_atomic(marker, {"until": end.isoformat(), "rows": total, "last_batch": newest})
        tables = FS.write_tables(spec, settings, landed_rows(settings, spec, sessions)) if total else {}
    reasons: dict[str, int] = {}
    for r in rejected:
        key = f"{r['field']}:{r['rule']}"
        reasons[key] = reasons.get(key, 0) + 1
    return LandResult(spec.name, end.isoformat(), len(new), len(accepted), len({r["row"] for r in rejected}),
                      total, batch_id, tables, reasons, swept)


def _land(spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session], new: pd.DataFrame,
          accepted: pd.DataFrame, rejected: list[dict[str, Any]], end: pd.Timestamp) -> int:
    """Stage the part, record the batch, its quarantined rows and the accepted rows' outcomes in one
    transaction, commit, publish the part."""
    times = pd.to_datetime(new[spec.data.time_col], utc=True)
    staged: Path | None = None
    part: list[Path] = []
    try:
        with transaction(sessions) as s:
            batch = _record(spec, s, new, accepted, rejected, end, times)
            batch_id = int(batch.id)
            if len(accepted):
                part.append(part_path(settings, spec, batch_id))
                staged = offline.stage(accepted.reset_index(drop=True), part[0])
                batch.landed_path = str(part[0])
            crashpoint("staged")  # part staged, transaction open
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    crashpoint("committed")  # committed, part still staged
    offline.publish(part)
    crashpoint("published")
    return batch_id


def _record(spec: UseCaseSpec, s: Session, new: pd.DataFrame, accepted: pd.DataFrame,
            rejected: list[dict[str, Any]], end: pd.Timestamp, times: pd.Series) -> IngestionBatch:
    """Add the batch, its quarantined rows and the accepted rows' outcomes to the open transaction."""
    batch = IngestionBatch(kind=_kind(spec), source=f"{SOURCE}{end.isoformat()}", status="landed",
                           received=len(new), accepted=len(accepted),
                           quarantined=len({r["row"] for r in rejected}), outcomes=len(accepted),
                           min_event_time=times.min().to_pydatetime(), max_event_time=times.max().to_pydatetime())
    s.add(batch)
    s.flush()
    for r in rejected:
        s.add(QuarantinedRow(batch_id=batch.id, row_number=int(r["row"]), field=str(r["field"])[:64],
                             rule=str(r["rule"])[:64], reason=str(r["reason"]),
                             raw=json_safe(new.iloc[int(r["row"]) - 1].to_dict())))
    if len(accepted):
        ids = _row_ids(spec, accepted)
        when = known_at(spec, accepted)
        event = pd.to_datetime(accepted[spec.data.time_col], utc=True)
        labels = label_values(spec, accepted)
        rows = [{"model_name": spec.name, "entity_key": ids.iloc[i], "event_time": event.iloc[i].to_pydatetime(),
                 "available_at": when.iloc[i].to_pydatetime(), "label": float(labels.iloc[i]), "detail": {},
                 "batch_id": batch.id}
                for i in range(len(accepted)) if pd.notna(labels.iloc[i])]
        if rows:
            s.execute(insert(Outcome), rows)
    return batch


def online_until(settings: Settings, spec: UseCaseSpec, until: Any) -> dict[str, Any]:
    """Register the use case's Feast objects (idempotent) and materialize up to `until`: after an
    ingest its features are servable and trainable as of that time."""
    import contextlib
    import sys

    from retrain.features.store import materialize_until

    with contextlib.redirect_stdout(sys.stderr):  # Feast prints progress on stdout; keep it for --json
        FS.apply(spec, settings)
        return materialize_until(FS.open_store(settings), settings, until, start=data_start(settings, spec))


def ingest(spec: UseCaseSpec, settings: Settings, sessions: sessionmaker[Session], *, path: Path | None,
           until: str | None, refresh: bool = True, progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """`retrain ingest` (and the ingest flow) for any use case: a batch file or the history released up
    to `until`; its feature tables rebuilt (and, with its own Feast repository, applied and materialized).
    A refused batch answers status `rejected` with the reason in `error`."""
    say = progress or (lambda _m: None)
    if (path is None) == (until is None):
        raise UseCaseError("give exactly one of a batch file or an until time")
    if spec.pipeline is not None:
        out: dict[str, Any] = load_callable(spec, spec.pipeline.ingest)(settings, sessions, path=path, until=until,
                                                                        refresh=refresh, progress=say)
        return out
    if spec.feast is None:
        raise UseCaseError(f"use case {spec.name}: no feast section and no pipeline code: nothing to land (its "
                           "file feeds `retrain backtest`)")
    if until is None:
        raise UseCaseError(f"use case {spec.name}: batch files are not taken yet; replay its history with --until DATE")
    say(f"landing {spec.name} up to {until}")
    landed = replay_until(spec, settings, sessions, until).to_dict()
    if refresh and landed["total_landed"]:
        say(f"feast apply + materialize {spec.name} up to {until}")
        landed["online"] = online_until(settings, spec, until)
    return landed
