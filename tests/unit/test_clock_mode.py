"""Simulated time is an explicit mode (`simulated_clock`, RETRAIN_SIMULATED_CLOCK), off by default.

Off, a sim_clock.json a demo left in the home never moves retrain's present (`clock.now`, `db.utcnow`,
the service's prediction stamps) and `retrain status` reports it as stale; on, time follows the file.
The service says which clock it runs on in `GET /model`. No servers: the service runs in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.support.models import fake_version_fields, registry_home
from tests.unit.test_serving_api import FLIGHT, StubStore, champion_booster
from typer.testing import CliRunner

from retrain.core import clock, services
from retrain.core.config import Settings, get_settings
from retrain.core.db import Prediction, utcnow
from retrain.core.jsonsafe import write_json_atomic
from retrain.core.status import summary
from retrain.demo import common as demo
from retrain.features import store as feature_store
from retrain.models import registry
from retrain.models import store as modelstore

SIM = datetime(2013, 3, 1, 6, 0, tzinfo=UTC)


def near_wall_clock(when: datetime) -> bool:
    return abs(when - datetime.now(UTC)) < timedelta(minutes=5)


def leave_clock_file(home: Path, when: datetime = SIM) -> Path:
    """What a demo leaves behind (written directly: `set_now` refuses with the mode off)."""
    path = home / clock.CLOCK_FILE
    write_json_atomic(path, {"now": when.isoformat()})
    return path


@pytest.fixture
def env_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """RETRAIN_HOME = tmp_path for `get_settings()` (and so `db.utcnow()`); the mode unset."""
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    monkeypatch.delenv("RETRAIN_DATABASE_URL", raising=False)
    monkeypatch.setenv(clock.ENV_VAR, "0")
    monkeypatch.delenv(clock.ENV_VAR)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_the_mode_is_off_by_default() -> None:
    field = Settings.model_fields["simulated_clock"]
    assert field.default is False and field.description


def test_off_a_left_behind_file_does_not_move_time(env_home: Path) -> None:
    leave_clock_file(env_home)
    settings = Settings(home=env_home)
    assert not settings.simulated_clock and not get_settings().simulated_clock
    assert near_wall_clock(clock.now(settings)) and near_wall_clock(utcnow())
    assert not clock.simulated(settings)


def test_off_the_file_is_never_read(env_home: Path) -> None:
    (env_home / clock.CLOCK_FILE).write_text("not json")  # reading it would raise
    assert near_wall_clock(clock.now(Settings(home=env_home))) and near_wall_clock(utcnow())


def test_off_setting_a_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=clock.ENV_VAR):
        clock.set_now(Settings(home=tmp_path, simulated_clock=False), SIM)
    assert not (tmp_path / clock.CLOCK_FILE).exists()


def test_on_time_follows_the_file(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.ENV_VAR, "1")
    get_settings.cache_clear()
    settings = Settings(home=env_home)
    assert settings.simulated_clock
    assert near_wall_clock(clock.now(settings)) and not clock.simulated(settings)  # no time set yet
    assert clock.state(settings).label == "simulated, no time set yet (wall-clock)"
    clock.set_now(settings, SIM)
    assert clock.now(settings) == SIM and utcnow() == SIM and clock.simulated(settings)
    clock.set_now(settings, SIM + timedelta(days=1))
    assert utcnow() == SIM + timedelta(days=1)
    clock.clear(settings)
    assert near_wall_clock(utcnow())


def test_status_reports_the_clock_and_a_stale_file(tmp_path: Path) -> None:
    settings, sessions = registry_home(tmp_path, simulated_clock=False)
    assert summary(settings, sessions)["clock"] == {"mode": "real", "now": None, "label": "real",
                                                    "stale_file": None, "warning": None}
    path = leave_clock_file(tmp_path)
    off = summary(settings, sessions)["clock"]
    assert off["label"] == "real" and off["now"] is None and off["stale_file"] == str(path)
    assert "stale" in off["warning"] and clock.ENV_VAR in off["warning"]

    on = summary(settings.model_copy(update={"simulated_clock": True}), sessions)["clock"]
    assert on == {"mode": "simulated", "now": SIM.isoformat(), "label": f"simulated at {SIM.isoformat()}",
                  "stale_file": None, "warning": None}


def test_status_command_prints_the_clock(env_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrain.cli.main import build_app

    app = build_app()
    res = CliRunner().invoke(app, ["status"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "clock" in res.stdout and "real" in res.stdout and "stale" not in res.stdout

    leave_clock_file(env_home)
    res = CliRunner().invoke(app, ["status"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "warning" in res.stdout and "stale" in res.stdout and clock.ENV_VAR in res.stdout
    res = CliRunner().invoke(app, ["status", "--json"])
    assert json.loads(res.stdout)["clock"]["stale_file"] == str(env_home / clock.CLOCK_FILE)

    monkeypatch.setenv(clock.ENV_VAR, "1")
    get_settings.cache_clear()
    res = CliRunner().invoke(app, ["status"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert f"simulated at {SIM.isoformat()}" in res.stdout and "stale" not in res.stdout


def test_child_processes_get_the_mode_of_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.ENV_VAR, "1")  # inherited from the caller's environment: the settings decide
    off = Settings(home=tmp_path, simulated_clock=False)
    on = Settings(home=tmp_path, simulated_clock=True)
    for spec in (services.prefect_worker_spec(off), services.prefect_server_spec(off)):
        assert services.child_env(off, spec.env)[clock.ENV_VAR] == "0"
    assert services.child_env(on, services.prefect_worker_spec(on).env)[clock.ENV_VAR] == "1"
    assert Settings(home=tmp_path).simulated_clock  # the variable reads as on
    monkeypatch.setenv(clock.ENV_VAR, "0")
    assert not Settings(home=tmp_path).simulated_clock


def test_the_demo_turns_the_mode_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (clock.ENV_VAR, *demo.DEMO_POLICY):  # recorded so that the test restores them
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    with pytest.raises(RuntimeError, match=clock.ENV_VAR):
        demo.require_simulated_clock(Settings(home=tmp_path))
    monkeypatch.setenv(clock.ENV_VAR, "0")  # not overridable: the demo replays history
    demo.apply_demo_policy()
    settings = Settings(home=tmp_path)
    assert os.environ[clock.ENV_VAR] == "1" and settings.simulated_clock
    demo.require_simulated_clock(settings)
    assert services.child_env(settings)[clock.ENV_VAR] == "1"  # the worker's flow runs and the service follow


# ------------------------------------------------------------------------------ the service: GET /model


@pytest.fixture
def runtime_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A registry with a real champion and a stub online store (as test_serving_api.py); the mode off."""
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path))
    monkeypatch.setenv("RETRAIN_SERVE_LOG_FLUSH_SECONDS", "3600")  # only the shutdown flush writes
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    monkeypatch.setenv(clock.ENV_VAR, "0")
    store = StubStore()
    monkeypatch.setattr(feature_store, "open_store", lambda settings: store)
    monkeypatch.setattr(feature_store, "service", lambda store, name="": "flight_delay_v1")
    get_settings.cache_clear()
    settings, sessions = registry_home(tmp_path)
    saved = modelstore.save_booster(settings, champion_booster(), metadata={}, labels={})
    fields = fake_version_fields(1)
    fields.update(bento_model_tag=saved.tag, model_checksum=saved.checksum)
    registry.promote(sessions, registry.register_version(sessions, **fields).version, reason="unit test",
                     actor="test")
    yield settings
    get_settings.cache_clear()


def test_model_info_shows_the_clock_the_service_stamps_with(runtime_home: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Off: `real`, and a stale file changes nothing; on: the simulated present, in `GET /model` (the
    service answers it with `model_info()`) and in the prediction log. The worker reads the mode from
    the process's settings on every call, so clearing their cache switches it."""
    from flight_delay.serving import FlightsRuntime
    from flight_delay.serving_schema import FlightIn
    from retrain.serving.models import ModelInfo

    assert "clock" in ModelInfo.model_fields
    settings = runtime_home
    leave_clock_file(settings.home, SIM - timedelta(days=1))
    runtime = FlightsRuntime(settings)
    flight = [FlightIn.model_validate_json(json.dumps(FLIGHT))]
    infos: list[dict[str, Any]] = []

    async def scenario() -> None:
        await runtime.start()
        try:
            await runtime.predict(flight)
            infos.append(runtime.model_info().model_dump(mode="json"))
            monkeypatch.setenv(clock.ENV_VAR, "1")
            get_settings.cache_clear()
            clock.set_now(settings.model_copy(update={"simulated_clock": True}), SIM)
            await runtime.predict(flight)
            infos.append(runtime.model_info().model_dump(mode="json"))
        finally:
            await runtime.stop()  # the final flush writes the prediction log

    asyncio.run(scenario())
    assert [i["clock"] for i in infos] == ["real", SIM.isoformat()]
    assert infos[0]["champion"]["version"] == "v1"
    with registry_home(settings.home)[1]() as s:
        real, simulated = s.scalars(select(Prediction.predicted_at).order_by(Prediction.id)).all()
    assert near_wall_clock(real) and simulated == SIM
