"""One conversion to JSON-storable values for metadata, profiles, reports and JSON columns, and the
small JSON state files under RETRAIN_HOME (written atomically, readable by other processes at any time)."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """Recursively: NaN/inf -> None (JSON and PostgreSQL hold neither), numpy scalars -> Python,
    times -> ISO 8601, tuples/sets -> lists, anything else unknown -> its text."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def read_json_state(path: Path) -> dict[str, Any] | None:
    """A small JSON state file (None when absent or unreadable: callers then do the full work)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, value: Mapping[str, Any], *, indent: int | None = None) -> None:
    """Write a small JSON state file so that readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=indent))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
