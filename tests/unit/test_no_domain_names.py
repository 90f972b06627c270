"""The engine knows no domain: flight names belong in usecases/flight_delay, not in src/retrain.

A ratchet while the flights move into their use-case folder: a module outside STILL_FLIGHTS must
have no flight names, and a module in it must still have some (remove it from the list once it is
clean, so the list only shrinks). The use-case engine (src/retrain/usecase/) is held to it now.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "retrain"
NAMES = re.compile(r"flight|carrier|tailnum|sched_dep|arr_delay|nycflights|airport", re.IGNORECASE)
STILL_FLIGHTS = frozenset({
    "backtest.py",
    "backtest_data.py",
    "commands/backtest.py",
    "commands/data.py",
    "commands/ops.py",
    "config.py",
    "data.py",
    "db.py",
    "delay_facts.py",
    "demo.py",
    "demo_usecase.py",
    "evaluate.py",
    "features.py",
    "ingest.py",
    "ingest_contract.py",
    "migrations/versions/0001_initial_schema.py",
    "migrations/versions/0003_generic_rows.py",
    "monitor_rules.py",
    "offline.py",
    "predlog.py",
    "services.py",
    "serving.py",
    "serving_metrics.py",
    "serving_schema.py",
    "status.py",
    "train.py",
    "usecase/history.py",
    "usecase/landing.py",
    "usecase/serving.py",
    "usecase/spec.py",
})


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_domain_names_only_where_still_listed(path: Path) -> None:
    rel = str(path.relative_to(SRC))
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1) if NAMES.search(line)]
    if rel in STILL_FLIGHTS:
        assert hits, f"{rel} has no flight names any more: remove it from STILL_FLIGHTS"
    else:
        assert not hits, f"{rel} names the flights domain (move it to usecases/flight_delay):\n" + "\n".join(hits[:10])


def test_the_list_names_existing_modules() -> None:
    present = {str(p.relative_to(SRC)) for p in _modules()}
    assert present >= STILL_FLIGHTS, sorted(STILL_FLIGHTS - present)


def test_the_usecase_engine_is_nearly_clean() -> None:
    """Only the spec's `builtin: flights` source and its history/landing/serving adapters still name them."""
    usecase = {m for m in STILL_FLIGHTS if m.startswith("usecase/")}
    assert usecase <= {"usecase/spec.py", "usecase/history.py", "usecase/landing.py", "usecase/serving.py"}
