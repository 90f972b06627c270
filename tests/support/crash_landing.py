"""One landing in its own process, for the crash tests: `python -m tests.support.crash_landing MODE HOME ...`.

RETRAIN_CRASH_AT (set by the test) names the step where the process kills itself (`offline.crashpoint`).
Modes: `flights-file HOME CSV [DATABASE_URL]` (`ingest_file`; SQLite in HOME by default),
`flights-replay HOME CLOCK.parquet UNTIL` (`replay_until` over the flights in CLOCK) and
`usecase HOME UNTIL` (the bike-sharing replay, `landing.replay_until`, on RETRAIN_HOME).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from sqlalchemy.orm import Session, sessionmaker

from retrain.core import db
from retrain.core.config import Settings


def flight_home(home: Path, url: str | None = None) -> tuple[Settings, sessionmaker[Session]]:
    """The settings and sessions of a flights home made by `tests.support.ingest_home.make_home`."""
    from tests.support.flights import flight_settings

    settings = flight_settings(home=home, database_url=url or f"sqlite:///{home / 'retrain.db'}")
    return settings, db.session_factory(db.make_engine(settings.db_url))


def usecase_home(name: str) -> tuple[object, Settings, sessionmaker[Session]]:
    """A use case's spec, settings and sessions on RETRAIN_HOME (the caller's environment)."""
    from retrain.core.config import base_settings
    from retrain.models.registry import open_registry
    from retrain.usecase.catalog import load_usecase, settings_for

    spec = load_usecase(base_settings(), name)
    settings = settings_for(spec, base_settings())
    return spec, settings, open_registry(settings)


def main(argv: list[str]) -> None:
    mode, home = argv[0], Path(argv[1])
    if mode == "flights-file":
        from flight_delay.ingest import ingest_file

        settings, sessions = flight_home(home, argv[3] if len(argv) > 3 else None)
        ingest_file(argv[2], settings=settings, sessions=sessions)
    elif mode == "flights-replay":
        from flight_delay.data import ReplayClock
        from flight_delay.ingest import replay_until

        settings, sessions = flight_home(home)
        replay_until(settings, sessions, argv[3], clock=ReplayClock(pd.read_parquet(argv[2])))
    elif mode == "usecase":
        from retrain.usecase import landing

        spec, settings, sessions = usecase_home("bike_sharing")
        landing.replay_until(spec, settings, sessions, argv[2])  # type: ignore[arg-type]
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
