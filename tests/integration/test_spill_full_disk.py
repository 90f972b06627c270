"""The prediction log spilling to a full filesystem: lost rows are counted and logged at error level, never silent.

The spill directory is a real 64 KiB tmpfs (mounted for the test, unmounted afterwards; the test skips
where it cannot mount, e.g. without root). The database is down (a session factory that refuses to
connect), so every flush spills; after a few batches the tmpfs is full and the spill writes fail with
ENOSPC. Requests keep coming: the log keeps what fits its bound in memory, hands the rest to the
overflow writer (which fails too), and drops the remainder. Afterwards, with the database back:

- every submitted row is written, replayed from the spill files that did fit, or counted as dropped
  (`Tally.n_dropped` and the `retrain_predlog_rows_dropped_total` Prometheus counter, by the same
  amount): written + dropped == submitted, no row twice;
- the dropped rows are logged at ERROR level ("DROPPED n rows"), and the logged counts add up to
  the counter; the flush's spill write raises ENOSPC (in serving, `run` logs it as "flush failed");
- the full disk leaves no temporary file behind, and the spill files that were sealed replay and go.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from tests.support.outage import Switchable

from retrain.core.db import Prediction, make_engine, session_factory, upgrade
from retrain.serving.predlog import LogBatch, PredictionLog, SpillDir, clean_features

pytestmark = [pytest.mark.integration]

T0 = datetime(2013, 2, 10, 11, 0, tzinfo=UTC)
SIZE = "64k"
BUFFER_ROWS = 40
REQUESTS = 120
ROWS_PER_REQUEST = 4
DROPPED_METRIC = "retrain_predlog_rows_dropped_total"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards; skip where mounting is not allowed."""
    mount_point = tmp_path / "spill"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root (mount -t tmpfs)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def rows(request_id: str, n: int) -> list[dict[str, Any]]:
    return [{"request_id": request_id, "model_name": "flight_delay", "model_version": "v1", "predicted_at": T0,
             "entity_key": f"{request_id}-{i}", "event_time": T0 + timedelta(minutes=i),
             "attributes": {"carrier": "UA", "origin": "EWR", "dest": "IAH", "tailnum": "N" + "1" * 40},
             "features": clean_features([f"f{j}" for j in range(12)], [float(j) for j in range(12)]),
             "missing_features": [], "score": 0.25 + i / 1000, "shadow_version": None, "shadow_score": None}
            for i in range(n)]


def test_full_spill_disk_counts_and_reports_every_lost_row(
        full_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from retrain.serving.runtime import _counters

    url = f"sqlite:///{tmp_path / 'retrain.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = Switchable(session_factory(engine))
    sessions.down = True
    metric_before = REGISTRY.get_sample_value(DROPPED_METRIC) or 0.0
    plog = PredictionLog(sessions, full_disk, retry_seconds=0.0, max_buffer_rows=BUFFER_ROWS,  # type: ignore[arg-type]
                         counters=_counters())
    flush_errors: list[OSError] = []
    try:
        with caplog.at_level(logging.WARNING, logger="retrain.serving.predlog"):
            for i in range(REQUESTS):
                plog.submit(LogBatch(rows(f"r{i}", ROWS_PER_REQUEST)))
                assert plog.pending <= 2 * BUFFER_ROWS + ROWS_PER_REQUEST  # the bound holds on a full disk
                if i % 3 == 2:
                    try:
                        plog.flush_once()
                    except OSError as exc:  # the spill write on the full disk: rows requeued or dropped
                        flush_errors.append(exc)
            assert flush_errors, "the 64 KiB spill disk never filled up"
            assert all(e.errno == errno.ENOSPC for e in flush_errors), [repr(e) for e in flush_errors[:3]]
            sealed_rows = sum(len(SpillDir.read(p)) for p in SpillDir(full_disk).sealed())
            assert sealed_rows > 0, "nothing fit on the spill disk before it filled"
            assert plog.tally.n_dropped > 0, "a full spill disk and a full buffer dropped nothing"
            assert not list(full_disk.glob(".spill-*")), "a failed spill write left its temporary file"

            sessions.down = False  # the database is back: what was kept is written, the spill files replay
            plog.close()
    finally:
        engine.dispose()

    submitted = REQUESTS * ROWS_PER_REQUEST
    with sessions.real() as s:
        keys = Counter(s.scalars(select(Prediction.entity_key)))
    assert max(keys.values()) == 1, "a row logged twice"
    dropped = plog.tally.n_dropped
    assert sum(keys.values()) + dropped == submitted, \
        f"{submitted} submitted, {sum(keys.values())} logged, {dropped} counted as dropped: rows lost silently"
    assert (REGISTRY.get_sample_value(DROPPED_METRIC) or 0.0) - metric_before == dropped
    assert not SpillDir(full_disk).sealed(), "spill files left after the replay"

    drop_lines = [r for r in caplog.records if "DROPPED" in r.getMessage()]
    assert drop_lines and all(r.levelno == logging.ERROR for r in drop_lines)
    assert sum(int(r.getMessage().split("DROPPED ")[1].split()[0]) for r in drop_lines) == dropped
    print(f"\nfull spill disk ({SIZE}): {submitted} rows submitted, {sealed_rows} fit on the spill disk, "
          f"{len(flush_errors)} flushes failed with ENOSPC, {dropped} rows dropped (counted, "
          f"{len(drop_lines)} ERROR lines), {sum(keys.values())} logged after recovery")
