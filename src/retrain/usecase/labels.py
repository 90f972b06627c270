"""A use case's labels: their values and when each became known (matured)."""

from __future__ import annotations

import pandas as pd

from retrain.usecase.spec import UseCaseSpec


def known_at(spec: UseCaseSpec, rows: pd.DataFrame) -> pd.Series:
    """When each row's label became known (UTC): time + label.delay_hours, or the `available_col` stamp."""
    when = pd.to_datetime(rows[spec.data.time_col], utc=True) + pd.Timedelta(hours=spec.label.delay_hours)
    col = spec.label.available_col
    if col and col in rows.columns:
        stamped = pd.to_datetime(rows[col], utc=True)
        when = stamped.where(stamped.notna(), when)
    return when


def label_values(spec: UseCaseSpec, rows: pd.DataFrame) -> pd.Series:
    """The label as floats (0/1 for binary, from bools, numbers or yes/no words); NaN where missing."""
    from retrain.usecase.frames import binary_label, regression_label

    col = spec.label.column
    parse = binary_label if spec.objective == "binary" else regression_label
    return pd.to_numeric(parse(rows[col], col), errors="coerce").astype("float64")
