"""Checking a batch against a use case's data contract: structure first (unknown or missing columns
refuse the whole batch), then per cell: type while coercing to the contract's dtypes, and values
(nulls, ranges, categories) through a pandera schema built from the contract. Every failing row is
quarantined with its reasons; nothing is dropped silently.
"""


import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from retrain.usecase.contract import (
    _UTC_NS,
    MAX_SAFE_INT,
    ColumnContract,
    DataContract,
    InputFileError,
    _blank,
)
from retrain.usecase.frames import (
    FALSE_WORDS,
    TRUE_WORDS,
    _plain,
)

_DTYPES: dict[str, Any] = {"number": "float64", "integer": "Int64", "boolean": "boolean", "category": "string",
                           "datetime": _UTC_NS}

def _dtype(col: ColumnContract, contract: DataContract) -> Any:
    if col.role == "label":
        return "float64" if contract.objective == "regression" else "boolean"
    return _DTYPES[col.kind]


def pandera_schema(contract: DataContract) -> pa.DataFrameSchema:
    """The pandera schema of a batch coerced to the contract's dtypes (see `check_batch`).

    Types and nullability per column; numeric ranges as `in_range` checks, categories as `isin`
    checks; the time column is a UTC timestamp and never null (every row must have a parsed time);
    the label may be null (labels arrive later) and has no range check.
    """
    columns: dict[str, pa.Column] = {}
    for col in contract.columns:
        checks: list[pa.Check] = []
        if col.role == "feature":
            if col.kind in ("number", "integer") and (col.min is not None or col.max is not None):
                lo = col.min if col.min is not None else -math.inf
                hi = col.max if col.max is not None else math.inf
                checks.append(pa.Check.in_range(lo, hi))
            if col.kind == "category" and col.categories is not None:
                checks.append(pa.Check.isin(list(col.categories)))
        nullable = col.role == "label" or (col.role != "time" and col.nullable)
        columns[col.name] = pa.Column(_dtype(col, contract), checks=checks, nullable=nullable, required=True)
    return pa.DataFrameSchema(columns, strict=False, ordered=False, coerce=False, name="usecase_batch")


@dataclass(frozen=True)
class BatchCheck:
    """A checked batch: `accepted` rows in the contract's dtypes (index = 0-based position in the
    batch) and `rejected` reasons, one dict per failing cell: row (1-based), field, rule, reason, value."""

    accepted: pd.DataFrame
    rejected: list[dict[str, Any]]

    @property
    def rejected_rows(self) -> list[int]:
        """Distinct 1-based numbers of the quarantined rows, in order."""
        return sorted({int(r["row"]) for r in self.rejected})


def _json_value(value: Any) -> Any:
    """A raw cell as a plain JSON-friendly value (None for blanks, ISO text for timestamps)."""
    value = _plain(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return value


def _text(v: Any) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer() and abs(float(v)) < MAX_SAFE_INT:
        return str(int(v))
    return str(v)


def _none_where(values: pd.Series, mask: npt.NDArray[np.bool_]) -> pd.Series:
    """An object copy of `values` with None where `mask` is True."""
    out = values.to_numpy(dtype=object).copy()
    out[mask] = None
    return pd.Series(out, index=values.index, dtype=object)


def _coerce(raw: pd.Series, col: ColumnContract, contract: DataContract) -> tuple[pd.Series, np.ndarray, str]:
    """(values in the contract's dtype, cells of the wrong type, what the type rule says)."""
    blank = _blank(raw)
    n = len(raw)
    obj = _none_where(raw, blank)
    kind = col.kind
    if col.role == "label":
        kind = "number" if contract.objective == "regression" else "boolean"
    if kind == "datetime":
        if pd.api.types.is_datetime64_any_dtype(raw.dtype):
            parsed = pd.to_datetime(raw, utc=True)
        else:
            if raw.dtype == object:  # numbers are not times, even where pandas would read them as epochs
                is_number = np.fromiter((isinstance(v, int | float | np.number | np.bool_) for v in obj),
                                        dtype=bool, count=n)
            else:
                is_number = np.full(n, pd.api.types.is_numeric_dtype(raw.dtype)
                                    or pd.api.types.is_bool_dtype(raw.dtype))
            texts = _none_where(obj, is_number)
            try:
                parsed = pd.to_datetime(texts, utc=True, errors="coerce", format="mixed")
            except (ValueError, TypeError):
                parsed = pd.Series([pd.to_datetime(v, utc=True, errors="coerce") for v in texts], index=raw.index)
        values = pd.Series(parsed, index=raw.index).dt.floor("us").astype(_UTC_NS)
        bad = ~blank & values.isna().to_numpy()
        return values, bad, "must be a date or timestamp (e.g. 2024-01-31 or 2024-01-31T08:00:00Z)"
    if kind in ("number", "integer"):
        if pd.api.types.is_bool_dtype(raw.dtype):
            is_bool = ~blank
        elif raw.dtype == object:
            is_bool = np.fromiter((isinstance(v, bool | np.bool_) for v in obj), dtype=bool, count=n)
        else:
            is_bool = np.zeros(n, dtype=bool)
        numbers = pd.to_numeric(_none_where(obj, is_bool), errors="coerce").astype("float64")
        ok = np.isfinite(numbers.to_numpy())
        if kind == "integer":
            filled = numbers.fillna(0.5).to_numpy()
            with np.errstate(invalid="ignore"):
                ok &= (np.mod(filled, 1.0) == 0) & (np.abs(filled) < MAX_SAFE_INT)
        bad = ~blank & ~ok
        numbers = numbers.where(ok)
        if kind == "integer":
            return numbers.astype("Int64"), bad, "must be an integer"
        return numbers, bad, "must be a finite number"
    if kind == "boolean":
        def as_bool(v: Any) -> Any:
            if v is None:
                return None
            if isinstance(v, bool | np.bool_):
                return bool(v)
            word = _text(v).strip().lower()
            return True if word in TRUE_WORDS else False if word in FALSE_WORDS else pd.NA
        mapped = pd.Series([as_bool(v) for v in obj], index=raw.index, dtype="object")
        bad = ~blank & mapped.isna().to_numpy()
        rule = "must be a binary label: 0/1 or true/false" if col.role == "label" else "must be true/false (or 1/0)"
        return mapped.astype("boolean"), bad, rule
    texts = pd.Series([None if v is None else _text(v) for v in obj], index=raw.index, dtype="string")
    return texts, np.zeros(n, dtype=bool), "must be text"


def _reason_text(col: ColumnContract, rule: str, type_rule: str) -> str:
    if rule == "type":
        return type_rule
    if rule == "not_null":
        return "must not be empty (the contract saw no empty values here)"
    if rule == "range":
        return f"must be between {col.min:g} and {col.max:g}"
    cats = col.categories or []
    shown = ", ".join(map(repr, cats[:10])) + (", ..." if len(cats) > 10 else "")
    return f"must be one of the {len(cats)} known categories ({shown})"


def _rule_of(check: str) -> str:
    if check == "not_nullable":
        return "not_null"
    if check.startswith("in_range"):
        return "range"
    if check.startswith("isin"):
        return "category"
    raise RuntimeError(f"unexpected schema failure {check!r}: coercion should have produced the contract dtypes")


def check_batch(df: pd.DataFrame, contract: DataContract) -> BatchCheck:
    """Split a batch into accepted rows and quarantined reasons; refuse the whole batch (InputFileError)
    when it has unknown or missing columns. len(accepted) + len(rejected_rows) == len(df)."""
    if not isinstance(df, pd.DataFrame):
        raise InputFileError(f"batch: expected a DataFrame, got {type(df).__name__}")
    names = [str(c) for c in df.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputFileError(f"batch: duplicate column name(s): {', '.join(map(repr, dupes))}")
    known = set(contract.names) | set(contract.ignored_columns)
    extra = [n for n in names if n not in known]
    if extra:
        raise InputFileError(f"batch: unknown column(s) {', '.join(map(repr, extra))}: not in the contract; the "
                             "whole batch is refused (nothing is dropped silently): remove them, or re-run "
                             "`retrain init` to make them features")
    missing = [c for c in contract.names if c not in names]
    if missing:
        raise InputFileError(f"batch: missing contract column(s) {', '.join(map(repr, missing))}; it has: "
                             f"{', '.join(names) or 'none'}")
    raw = df.reset_index(drop=True)
    raw.columns = pd.Index(names)

    coerced: dict[str, pd.Series] = {}
    type_rules: dict[str, str] = {}
    failures: list[tuple[int, int, str, str]] = []  # (position, column order, field, rule)
    order = {c.name: i for i, c in enumerate(contract.columns)}
    for col in contract.columns:
        values, bad, type_rules[col.name] = _coerce(raw[col.name], col, contract)
        coerced[col.name] = values
        failures.extend((int(i), order[col.name], col.name, "type") for i in np.flatnonzero(bad))
    frame = pd.DataFrame(coerced, index=raw.index)

    typed = {(pos, name) for pos, _, name, _ in failures}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pandera concatenates all-NA failure frames
            pandera_schema(contract).validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        cases = cases[cases["index"].notna()]
        for column, check, index in zip(cases["column"], cases["check"], cases["index"], strict=True):
            rule = _rule_of(str(check))
            pos = int(index)
            if rule == "not_null" and (pos, str(column)) in typed:
                continue  # a wrong-type cell is reported as such, not as blank
            failures.append((pos, order[str(column)], str(column), rule))

    rejected: list[dict[str, Any]] = []
    for pos, _, name, rule in sorted(set(failures)):
        col = contract.column(name)
        value = _json_value(raw[name].iloc[pos])
        text = _reason_text(col, rule, type_rules[name])
        reason = f"{name}: {text}" if value is None else f"{name}: {text} (got {value!r})"
        rejected.append({"row": pos + 1, "field": name, "rule": rule, "reason": reason, "value": value})
    bad_rows = np.zeros(len(raw), dtype=bool)
    bad_rows[[p for p, _, _, _ in failures]] = True
    return BatchCheck(accepted=frame[~bad_rows], rejected=rejected)
