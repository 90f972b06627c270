"""Where the offline parquet tables live: built from RETRAIN_HOME, which must be an absolute path.

Feast does not expand variables in Python definitions, and DuckDB resolves relative parquet paths
against the current directory, so the paths are made absolute here and a missing variable is
reported by name instead of failing later with "unable to open database file".
"""

from __future__ import annotations

import os
from pathlib import Path


def retrain_home() -> Path:
    """The absolute data directory, or a clear error saying what to set."""
    value = os.environ.get("RETRAIN_HOME", "")
    if not value:
        raise RuntimeError(
            "RETRAIN_HOME is not set: export RETRAIN_HOME=/absolute/path/to/var "
            "(the Makefile sets it to ./var of the repo) before running feast commands"
        )
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise RuntimeError(f"RETRAIN_HOME must be an absolute path (got {value!r})")
    return path


def feature_table(name: str) -> str:
    """Absolute path of one feature table's parquet file."""
    return str(retrain_home() / "offline" / "features" / f"{name}.parquet")
