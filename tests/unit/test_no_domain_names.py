"""The engine knows no domain: flight names belong in usecases/flight_delay, not in src/retrain.

Every engine module is scanned; only the schema history (Alembic revisions that carried the first use
case's columns over, and the reader of rows in that old layout) may name them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "retrain"
NAMES = re.compile(r"flight|carrier|tailnum|sched_dep|arr_delay|nycflights|airport", re.IGNORECASE)
# Schema history: the revisions that carried the first use case's columns over (0001, 0003, 0004) and the
# reader of spill rows in that old layout must name those columns; nothing else in the engine may.
HISTORY = ("migrations/",)


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts
                  and not str(p.relative_to(SRC)).startswith(HISTORY))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_domain_names_only_where_still_listed(path: Path) -> None:
    rel = str(path.relative_to(SRC))
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1) if NAMES.search(line)]
    assert not hits, f"{rel} names the flights domain (move it to usecases/flight_delay):\n" + "\n".join(hits[:10])


def test_the_flights_live_in_their_use_case_folder() -> None:
    """The flights' own code is the package in usecases/flight_delay, reached only through its spec."""
    pkg = SRC.parents[1] / "usecases" / "flight_delay" / "flight_delay"
    assert {"ingest.py", "features.py", "serving.py", "pipeline.py", "history.py"} <= {p.name for p in pkg.glob("*.py")}
    spec = (pkg.parent / "usecase.yaml").read_text()
    assert "flight_delay.pipeline:catch_up" in spec and "flight_delay.history:load_history" in spec
