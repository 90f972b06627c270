"""The CLI reports a failed command as one `error:` line (exit 1); `--debug` shows the traceback.

Also: `retrain materialize` with nothing applied or ingested fails naming the command to run,
instead of exiting 0 having loaded nothing.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer

import retrain.core.config
from retrain.cli.main import DEBUG_HINT, error_message, main
from retrain.core.config import Settings, get_settings

RETRAIN = Path(sys.executable).parent / "retrain"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for key in list(os.environ):
        if key.startswith("RETRAIN_"):
            monkeypatch.delenv(key)
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("RETRAIN_HOME", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def _fail_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make every command fail at its first step (commands import get_settings when they run)."""

    def boom() -> Settings:
        raise exc

    monkeypatch.setattr(retrain.core.config, "get_settings", boom)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    return subprocess.run([str(RETRAIN), *args], env={**clean, "RETRAIN_HOME": str(home), **env},
                          capture_output=True, text=True, timeout=180, check=False)


# ---------------------------------------------------------------- the one-line message


def test_error_message_known_types_are_short_and_on_one_line() -> None:
    from sqlalchemy.exc import OperationalError

    assert error_message(RuntimeError("tables missing:\n  weather")) == "tables missing: weather"
    assert error_message(ValueError("bad date 'x'")) == "bad date 'x'"
    assert error_message(FileNotFoundError(2, "No such file or directory", "/nope.csv")) == (
        "No such file or directory: /nope.csv")
    db = OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open database file"))
    assert error_message(db) == "database error: unable to open database file"
    with pytest.raises(ValueError) as invalid:
        Settings(profile="bogus")  # type: ignore[arg-type]
    message = error_message(invalid.value)
    assert message.startswith("invalid Settings: RETRAIN_PROFILE: ") and "'bogus'" in message
    assert "\n" not in message and "errors.pydantic.dev" not in message


def test_error_message_other_types_name_the_type_and_hint_debug() -> None:
    assert error_message(KeyError("boom")) == f"KeyError: 'boom' {DEBUG_HINT}"
    assert error_message(RuntimeError()) == f"RuntimeError {DEBUG_HINT}"  # nothing to say: say what


# ---------------------------------------------------------------- main() in-process


def test_failed_command_prints_one_error_line_and_exits_1(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_with(monkeypatch, KeyError("boom"))
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: KeyError: 'boom' {DEBUG_HINT}"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_reraises_the_exception(
    how: str, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_with(monkeypatch, KeyError("boom"))
    if how == "env":
        monkeypatch.setenv("RETRAIN_DEBUG", "1")
    with pytest.raises(KeyError, match="boom"):
        main(["--debug", "status"] if how == "flag" else ["status"])
    assert _error_lines(capsys.readouterr().err) == []


def test_typer_exit_codes_pass_through(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ingest"])  # neither PATH nor --until: the command's own typer.Exit(2)
    assert exited.value.code == 2
    assert _error_lines(capsys.readouterr().err) == ["error: give exactly one of PATH or --until DATE"]
    _fail_with(monkeypatch, typer.Exit(3))
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    assert exited.value.code == 3
    assert capsys.readouterr().err == ""


def test_ctrl_c_exits_130_with_one_line(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_with(monkeypatch, KeyboardInterrupt())
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    assert exited.value.code == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted"]


def test_help_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--debug" in out and "materialize" in out


# ---------------------------------------------------------------- the real console script


def test_console_script_one_line_without_debug_traceback_with_it(home: Path) -> None:
    plain = _run(home, "status", RETRAIN_PROFILE="bogus")
    assert plain.returncode == 1, plain.stderr
    assert "Traceback" not in plain.stderr and "╭" not in plain.stderr  # no Python or Rich traceback
    assert plain.stderr.splitlines() == [
        "error: invalid Settings: RETRAIN_PROFILE: Input should be 'local' or 'production' (got 'bogus')"]

    debug = _run(home, "--debug", "status", RETRAIN_PROFILE="bogus")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "ValidationError" in debug.stderr
    assert _error_lines(debug.stderr) == []

    usage = _run(home, "ingest")
    assert usage.returncode == 2 and _error_lines(usage.stderr) == ["error: give exactly one of PATH or --until DATE"]


@pytest.mark.slow  # imports Feast (~7 s)
def test_materialize_before_apply_fails_naming_retrain_apply(home: Path) -> None:
    res = _run(home, "materialize", "--until", "2013-03-01")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    [line] = _error_lines(res.stderr)
    assert "no feature views are registered" in line and "retrain apply" in line
    assert str(home / "feast_registry.db") in line
    assert "online store up to" not in res.stdout + res.stderr


# ---------------------------------------------------------------- materialize_until without Feast


def _fake_store(views: list[Any], registry: str = "sqlite:////tmp/x/feast_registry.db") -> Any:
    return SimpleNamespace(config=SimpleNamespace(registry=SimpleNamespace(path=registry)),
                           list_feature_views=lambda: views)


def test_materialize_until_with_no_views_names_retrain_apply(home: Path) -> None:
    from retrain.features.store import NothingAppliedError, materialize_until

    store = _fake_store([], registry="postgresql+psycopg://retrain:s3cret@db:5432/retrain")
    with pytest.raises(NothingAppliedError, match="retrain apply") as err:
        materialize_until(store, get_settings(), "2013-03-01")
    assert "db:5432/retrain" in str(err.value) and "s3cret" not in str(err.value)


def test_materialize_until_with_no_feature_tables_names_retrain_ingest(home: Path) -> None:
    from retrain.features.store import NoFeatureDataError, materialize_until

    missing = home / "offline" / "features" / "weather.parquet"
    view = SimpleNamespace(name="weather_hourly", materialization_intervals=[], most_recent_end_time=None,
                           batch_source=SimpleNamespace(path=str(missing), timestamp_field="event_timestamp"))
    with pytest.raises(NoFeatureDataError, match="retrain ingest") as err:
        materialize_until(_fake_store([view]), get_settings(), "2013-03-01")
    assert "weather_hourly" in str(err.value) and str(missing) in str(err.value)
