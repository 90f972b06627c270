"""Rows in layouts older than the current schema, read into today's (the data side of the revisions).

Spill files written before revision 0003 hold rows of the first use case's prediction layout:
flight_id, sched_dep and four attribute columns; they replay as entity_key, event_time, attributes.
"""

from __future__ import annotations

from typing import Any

LEGACY_ATTRIBUTES = ("carrier", "origin", "dest", "tailnum")


def upgrade_spill_row(row: dict[str, Any]) -> dict[str, Any]:
    """A spill row of the layout before revision 0003 in the generic layout (others unchanged)."""
    if "entity_key" in row or "flight_id" not in row:
        return row
    out = {k: v for k, v in row.items() if k not in ("flight_id", "sched_dep", *LEGACY_ATTRIBUTES)}
    out["entity_key"] = row["flight_id"]
    out["event_time"] = row.get("sched_dep")
    out["attributes"] = {k: row[k] for k in LEGACY_ATTRIBUTES if k in row}
    return out
