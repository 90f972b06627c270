"""The README's commands for a use case with its own Feast repository, as a user runs them:
`retrain --usecase bike_sharing ingest / apply / materialize / train / promote / train / evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXE = str(Path(sys.executable).parent / "retrain")


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RETRAIN_HOME": str(home), "RETRAIN_RETRAIN_BUILD_BENTO": "false",
           "RETRAIN_NUM_BOOST_ROUND": "40", "RETRAIN_NUM_THREADS": "1"}
    env.pop("RETRAIN_USECASE", None)
    return subprocess.run([EXE, "--usecase", "bike_sharing", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_bike_sharing_from_ingest_to_an_evaluated_challenger(tmp_path: Path) -> None:
    home = tmp_path / "var"
    landed = json.loads(run(home, "ingest", "--until", "2011-03-15", "--json").stdout)
    assert landed["landed"] > 1500 and landed["quarantined"] == 0 and set(landed["tables"]) == {"weather", "demand"}
    assert set(landed["online"]["seeded"]) == {"bike_weather", "bike_demand"}  # ingest applied + materialized
    assert run(home, "apply").returncode == 0  # idempotent
    done = run(home, "materialize", "--until", "2011-03-15T00:00:00", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seeded"] == []  # already seeded by ingest
    first = json.loads(run(home, "train", "--from", "2011-01-01", "--to", "2011-02-15", "--json").stdout)
    assert "rmse" in first["validation"]
    promoted = run(home, "promote", first["version"], "--reason", "first champion")
    assert promoted.returncode == 0, promoted.stderr
    second = json.loads(run(home, "train", "--from", "2011-01-15", "--to", "2011-03-01", "--json").stdout)
    ev = run(home, "evaluate", second["version"], "--window-from", "2011-03-01", "--window-to", "2011-03-15",
             "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["decision"] in ("promote", "reject") and result["n_rows"] > 300
    assert {g["name"] for g in result["gates"]} >= {"improvement", "slices", "latency", "compatibility"}
    listed = json.loads(run(home, "models", "list", "--json").stdout)
    champion = [r["version"] for r in listed if r["alias"] == "champion"]
    assert champion == [second["version"] if result["decision"] == "promote" else first["version"]]
    watched = json.loads(run(home, "monitor", "--as-of", "2011-03-15", "--json").stdout)
    assert watched["model_name"] == "bike_sharing" and watched["version"] == champion[0]
    assert "rmse" in watched["summary"] and watched["summary"]["auc"] is None  # regression monitoring
    # the flights use case in the same home is untouched: its registry is separate
    env = {**os.environ, "RETRAIN_HOME": str(home)}
    env.pop("RETRAIN_USECASE", None)
    flights = subprocess.run([EXE, "models", "list", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert json.loads(flights.stdout) == []


def test_a_new_usecase_from_a_csv_to_a_champion_in_four_commands(tmp_path: Path) -> None:
    """The README's "Add your own model": init, ingest (lands, applies, materializes), train, evaluate
    (a first model is promoted when its absolute gates pass)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    n = 24 * 90
    ts = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    store = rng.choice(["north", "south", "east"], size=n)
    price = rng.uniform(1, 5, n)
    units = 40 + 15 * np.sin(ts.hour.to_numpy() / 24 * 2 * np.pi) - 4 * price + (store == "north") * 10 \
        + rng.normal(0, 3, n)
    pd.DataFrame({"ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "store": store, "price": price.round(2),
                  "units": units.round(1)}).to_csv(tmp_path / "sales.csv", index=False)
    home, ucs = tmp_path / "var", tmp_path / "usecases"
    env = {**os.environ, "RETRAIN_HOME": str(home), "RETRAIN_USECASES_DIR": str(ucs),
           "RETRAIN_RETRAIN_BUILD_BENTO": "false", "RETRAIN_NUM_BOOST_ROUND": "40", "RETRAIN_NUM_THREADS": "1"}
    env.pop("RETRAIN_USECASE", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    made = json.loads(cli("init", "sales", "--data", str(tmp_path / "sales.csv"), "--time-col", "ts",
                          "--label-col", "units", "--entity-col", "store", "--regression",
                          "--label-delay-hours", "1", "--json").stdout)
    assert "ts_hour" in made["features"] and "store" in made["features"]
    landed = json.loads(cli("--usecase", "sales", "ingest", "--until", "2024-03-01", "--json").stdout)
    assert landed["landed"] > 1000 and landed["online"]["seeded"]
    trained = json.loads(cli("--usecase", "sales", "train", "--from", "2024-01-01", "--to", "2024-02-15",
                             "--json").stdout)
    result = json.loads(cli("--usecase", "sales", "evaluate", trained["version"], "--window-from", "2024-02-15",
                            "--window-to", "2024-03-01", "--json").stdout)
    assert result["decision"] == "promote" and result["champion"] is None
    listed = json.loads(cli("--usecase", "sales", "models", "list", "--json").stdout)
    assert [r["alias"] for r in listed] == ["champion"]
