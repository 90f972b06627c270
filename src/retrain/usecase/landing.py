"""Landing a use case's rows as time passes: the replay that feeds its own Feast repository.

A row lands once its label has matured (`label.delay_hours` after its time, or its `available_col`):
that is when the history holds it whole. Each call lands what matured since the last one as one
immutable parquet part, records the batch, its quarantined rows (against `contract.yaml` when the
use case has one) and the outcomes in the system of record, and rebuilds the feature tables from
everything landed, so a feature table never holds what was not known by then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import insert

from retrain.core.config import Settings
from retrain.core.db import IngestionBatch, Outcome, QuarantinedRow, transaction
from retrain.core.jsonsafe import json_safe, read_json_state, write_json_atomic
from retrain.features.offline import file_lock, read_parts, write_parquet_atomic
from retrain.usecase import featurestore as FS
from retrain.usecase.catalog import UseCaseError, load_callable
from retrain.usecase.labels import known_at, label_values
from retrain.usecase.spec import UseCaseSpec

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

MARKER = "landed.json"


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raw_dir(settings: Settings, spec: UseCaseSpec) -> Path:
    """Landed raw parts of a use case."""
    return FS.tables_dir(settings, spec) / "raw"


def landed_rows(settings: Settings, spec: UseCaseSpec) -> pd.DataFrame:
    """Every landed row, in landing order (empty frame when nothing landed)."""
    parts = sorted(raw_dir(settings, spec).glob("part-*.parquet"))
    frame = read_parts(parts)
    return frame if frame is not None else pd.DataFrame()


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
    """Land every row of the use case's history whose label matured in (last call, `until`]."""
    if spec.feast is None:
        raise UseCaseError(f"{spec.name}: no feast section; its data path is the engine's (retrain ingest)")
    end = pd.Timestamp(until)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    settings.ensure_dirs()
    marker = FS.tables_dir(settings, spec) / MARKER
    with file_lock(settings.offline_dir / f".ingest-{spec.name}.lock"):
        state = read_json_state(marker) or {}
        since = pd.Timestamp(state["until"]) if state.get("until") else None
        if since is not None and end <= since:
            total = int(state.get("rows", 0))
            return LandResult(spec.name, end.isoformat(), 0, 0, 0, total, None)
        raw = FS.raw_rows(spec) if raw is None else raw
        ready = known_at(spec, raw)
        pick = (ready <= end) if since is None else (ready > since) & (ready <= end)
        new = raw[pick.to_numpy()]
        accepted, rejected = _contract_check(spec, new)
        batch_id = _record(spec, sessions, new, accepted, rejected, end) if len(new) else None
        if len(accepted):
            part = raw_dir(settings, spec) / f"part-{batch_id:06d}.parquet"
            write_parquet_atomic(accepted.reset_index(drop=True), part)
        total = int(state.get("rows", 0)) + len(accepted)
        write_json_atomic(marker, {"until": end.isoformat(), "rows": total})
    tables = FS.write_tables(spec, settings, landed_rows(settings, spec)) if total else {}
    reasons: dict[str, int] = {}
    for r in rejected:
        key = f"{r['field']}:{r['rule']}"
        reasons[key] = reasons.get(key, 0) + 1
    return LandResult(spec.name, end.isoformat(), len(new), len(accepted), len({r["row"] for r in rejected}),
                      total, batch_id, tables, reasons)


def _record(spec: UseCaseSpec, sessions: sessionmaker[Session], new: pd.DataFrame, accepted: pd.DataFrame,
            rejected: list[dict[str, Any]], end: pd.Timestamp) -> int:
    """The batch, its quarantined rows and the accepted rows' outcomes, in one transaction."""
    times = pd.to_datetime(new[spec.data.time_col], utc=True)
    with transaction(sessions) as s:
        batch = IngestionBatch(kind=spec.name[:32], source=f"replay until {end.isoformat()}", status="landed",
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
        return int(batch.id)


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
