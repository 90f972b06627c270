"""The flights' pipeline steps, as the engine calls them (refs in usecases/flight_delay/usecase.yaml,
`pipeline:`): ingestion of a batch file or of the replayed history, catch-up before a retrain,
`feast apply`, and training frames through `flight_delay_v1`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flight_delay import features as F
from retrain.core import clock
from retrain.core.config import Settings
from retrain.features import store as FS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from retrain.models.train import FrameProvider, TrainingSetLike


def ingest(settings: Settings, sessions: sessionmaker[Session], *, path: Path | None, until: str | None,
           refresh: bool, progress: Callable[[str], Any]) -> dict[str, Any]:
    """`retrain ingest PATH` (a flights batch file) or `--until DATE` (the 2013 flights released by then);
    then rebuild the feature tables (also when nothing new landed but the tables miss landed parts: an
    earlier ingest stopped before its rebuild). A refused batch answers status `rejected` with the reason."""
    from flight_delay.ingest import BatchRejected, ingest_file, replay_until

    payload: dict[str, Any]
    try:
        if path is not None:
            result = ingest_file(path, settings=settings, sessions=sessions, progress=progress)
            payload = result.model_dump(mode="json")
            landed_any = result.accepted > 0 or result.outcomes > 0
        else:
            assert until is not None
            replay = replay_until(settings, sessions, until, progress=progress)
            flights = replay.flights
            payload = {
                **replay.counts(),
                "status": "landed" if replay.batch_ids else "up_to_date",
                "batch_id": replay.batch_ids[0] if replay.batch_ids else None,
                "refused": 0,
                "reasons": flights.reasons if flights else {},
                "message": "; ".join(
                    r.message for r in (replay.flights, replay.outcome_batch) if r is not None
                ) or f"nothing new released up to {replay.until.isoformat()}",
            }
            landed_any = bool(replay.batch_ids)
    except BatchRejected as err:
        return {"status": "rejected", "batch_id": err.batch_id, "received": 0, "accepted": 0, "quarantined": 0,
                "error": str(err)}
    if refresh and (landed_any or F.tables_behind(settings)):  # behind: an ingest stopped before its refresh
        progress("rebuilding the feature tables")
        payload["feature_tables"] = F.refresh_feature_tables(settings, until)
    return payload


def catch_up(settings: Settings, now: datetime) -> dict[str, Any]:
    """Sweep the offline store after an interrupted landing; land what the replay clock released
    (simulated time only), rebuild the tables; materialize to `now`."""
    from flight_delay.ingest import replay_until
    from flight_delay.landed import sweep_now
    from retrain.models.registry import open_registry

    done: dict[str, Any] = {}
    sessions = open_registry(settings)
    swept = sweep_now(settings, sessions).counts()  # repair an interrupted landing before training reads
    if swept:
        done["swept"] = swept
    if clock.simulated(settings):
        done["replay"] = replay_until(settings, sessions, now).counts()
        done["tables"] = F.refresh_feature_tables(settings, now)
    done["materialize"] = FS.materialize_until(FS.shared_store(settings), settings, now)
    return done


def apply(settings: Settings) -> None:
    """`feast apply` of feature_repo/ (the four feature tables must exist)."""
    F.apply_repo(settings)


def frame_provider(settings: Settings, *, shared: bool = True) -> FrameProvider:
    """Training sets through the feature service (`features.training_set`).

    One store per provider, or with `shared` the process's shared store (`FS.shared_store`).
    """
    store = FS.shared_store(settings) if shared else FS.open_store(settings)

    def provide(start: datetime, end: datetime) -> TrainingSetLike:
        return F.training_set(store, settings, start, end)

    return provide

