"""The monitor's firing rules, sent on: each becomes a `retrain.alert.<kind>` event on
`retrain.model.<name>`, unless the ledger would skip it (same dedupe key already run, cooldown after a
promotion): then it is recorded with that reason instead, without spending a retrain flow run on it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from retrain.alerts.ledger import record_alert, record_if_blocked
from retrain.core.config import Settings
from retrain.core.events import AlertPayload, alert_event_name, emit, model_resource


def send_alerts(settings: Settings, sessions: sessionmaker[Session], model_name: str,
                alerts: Sequence[dict[str, Any]], now: datetime) -> dict[str, int]:
    """Emit one event per dedupe key for `alerts` (event payloads); returns {"sent", "skipped"}."""
    counts = {"sent": 0, "skipped": 0}
    sent_keys: set[str] = set()
    for raw in alerts:
        payload = AlertPayload.model_validate(raw)
        key = payload.effective_dedupe_key(model_name, now, settings)
        if key in sent_keys:  # several rules fired: one event per dedupe key
            record_alert(sessions, payload, model_name=model_name, outcome="deduplicated",
                         detail=f"dedupe key {key!r} already sent by this monitoring pass (seen by the monitor; "
                         "no event sent)", received_at=now)
            counts["skipped"] += 1
            continue
        # the ledger's check and the skip's record are one transaction under the model's lock
        if record_if_blocked(sessions, settings, payload, now, model_name=model_name,
                             note=" (seen by the monitor; no event sent)") is not None:
            counts["skipped"] += 1
            continue
        counts["sent"] += emit(alert_event_name(payload.kind), model_resource(model_name), dict(raw), settings)
        sent_keys.add(key)
    return counts


def send_notices(settings: Settings, sessions: sessionmaker[Session], model_name: str,
                 alerts: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Emit operational alerts (e.g. `stale_features`) once per dedupe key: a key the ledger already holds
    (its event was sent before, and the retrain deployment recorded it) is not sent again."""
    from sqlalchemy import select

    from retrain.core.db import Alert

    counts = {"sent": 0, "skipped": 0}
    for raw in alerts:
        payload = AlertPayload.model_validate(raw)
        with sessions() as session:
            known = session.scalar(select(Alert.id).where(Alert.model_name == model_name,
                                                          Alert.dedupe_key == payload.dedupe_key).limit(1))
        if known is not None:
            counts["skipped"] += 1
            continue
        counts["sent"] += emit(alert_event_name(payload.kind), model_resource(model_name), dict(raw), settings)
    return counts
