"""Ingestion and materialization serialize across hosts that share the system of record.

Two processes with two homes (two "hosts": nothing on disk in common) and one PostgreSQL database take
the same ingest lock: their critical sections never overlap, and a holder killed with SIGKILL frees it.
With the embedded default (SQLite, a file lock in each home) the same two processes do overlap: the
shared lock, not the test's timing, is what serializes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.pg import scratch_database

from retrain.core.config import Settings
from retrain.core.locks import advisory_key, shares_database

pytestmark = [pytest.mark.integration]

HOLD = 1.5
SCRIPT = """
import json, sys, time
from retrain.core.config import Settings
from retrain.features import offline, store
settings = Settings(home=sys.argv[1], database_url=sys.argv[2] or None, model_name="shared_model")
which = offline.ingest_lock if sys.argv[4] == "ingest" else store.materialization_lock
with which(settings):
    start = time.time()
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    end = time.time()
print(json.dumps([start, end]), flush=True)
"""


def _holder(home: Path, url: str, hold: float = HOLD, kind: str = "ingest") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(home), url, str(hold), kind], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interval(proc: subprocess.Popen[str]) -> tuple[float, float]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    start, end = json.loads(out.strip().splitlines()[-1])
    return float(start), float(end)


def _run_pair(tmp_path: Path, url: str, kind: str = "ingest") -> list[tuple[float, float]]:
    procs = [_holder(tmp_path / f"host{i}", url, kind=kind) for i in range(2)]
    return sorted(_interval(p) for p in procs)


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["ingest", "materialize"])
def test_two_homes_sharing_postgresql_serialize(tmp_path: Path, kind: str) -> None:
    with scratch_database("retrain_locks") as url:
        assert shares_database(Settings(home=tmp_path, database_url=url))
        (a0, a1), (b0, b1) = _run_pair(tmp_path, url, kind)
    assert a1 - a0 >= HOLD and b1 - b0 >= HOLD
    assert b0 >= a1, f"critical sections overlap: {a0:.2f}-{a1:.2f} and {b0:.2f}-{b1:.2f}"


@pytest.mark.postgres
def test_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    with scratch_database("retrain_locks") as url:
        first = _holder(tmp_path / "host0", url, hold=600)
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        second = _holder(tmp_path / "host1", url, hold=0.1)
        time.sleep(1.0)
        assert second.poll() is None  # waiting for the lock the first holds
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        start, _end = _interval(second)
    assert start >= killed_at and start - killed_at < 30  # the server released the dead session's lock


def test_separate_embedded_homes_do_not_share_a_lock(tmp_path: Path) -> None:
    (a0, a1), (b0, _b1) = _run_pair(tmp_path, "")
    assert b0 < a1  # two SQLite homes are two systems of record: nothing to serialize


def test_advisory_keys_are_stable_and_distinct() -> None:
    assert advisory_key("ingest:bike_sharing") == advisory_key("ingest:bike_sharing")
    assert advisory_key("ingest:bike_sharing") != advisory_key("ingest:flight_delay")
    assert -(2**63) <= advisory_key("materialize") < 2**63  # PostgreSQL's bigint
