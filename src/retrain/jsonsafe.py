"""One conversion to JSON-storable values for metadata, profiles, reports and JSON columns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
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
