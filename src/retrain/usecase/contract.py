"""The data contract of a use case: inferred once from the user's file (`retrain init`), written to
`contract.yaml` in the use-case folder, and used to check every later batch.

Inference refuses a file it cannot trust (no rows, a time column that does not parse, a label with
nothing to learn, a column of mixed types, ...) with an `InputFileError` that names the column and
the rule, with 1-based data-row numbers and examples. A batch is checked in two layers: structure
(unknown or missing columns refuse the whole batch), then per cell: type while coercing to the
contract's dtypes, and values (nulls, ranges, categories) through a pandera schema built from the
contract. Every failing row is quarantined with its reasons; nothing is dropped silently.
"""

from __future__ import annotations

import codecs
import gzip
import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrain.backtest_data import (
    FALSE_WORDS,
    TRUE_WORDS,
    BacktestInputError,
    _examples,
    _plain,
    binary_label,
    parse_time,
    regression_label,
)

Kind = Literal["number", "integer", "boolean", "category", "datetime"]
Role = Literal["time", "label", "entity", "feature"]
Objective = Literal["binary", "regression"]

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_SAFE_INT = 2**53
# A text value that looks like a date (2020-01-31, 2020/01/31, 31/01/2020, 1/31/20 ...).
_DATE_LIKE = re.compile(r"^\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})([ T].*)?$")
_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


class InputFileError(ValueError):
    """A bad input file or batch; the message names the file or column and the rule it breaks."""


# ---------------------------------------------------------------------------------- reading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return "".join(path.suffixes[-2:]) or "(none)"


def _open_bytes(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _utf8_error(path: Path) -> str:
    """Where the first non-UTF-8 byte is: `byte offset N (line L)`, offsets in the (decompressed) text."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, line = 0, 1
    with _open_bytes(path) as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # the decoder may hold up to 3 bytes of an unfinished character from the previous chunk
                held = len(exc.object) - len(chunk)
                pos = offset + exc.start - held
                head = exc.object[: exc.start]
                line += head.count(b"\n")
                bad = exc.object[exc.start : exc.end]
                return f"byte offset {pos} (line {line}): byte(s) {bad!r} ({exc.reason})"
            offset += len(chunk)
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return f"byte offset {offset - len(exc.object) + exc.start} (line {line}): truncated character at the end"
    return "an undecodable byte"


def read_user_file(path: Path) -> pd.DataFrame:
    """The user's CSV (`.csv`, `.csv.gz`, UTF-8) or parquet (`.parquet`, `.pq`) file; the suffix decides."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"--data: file {path} does not exist")
    if not path.is_file():
        raise InputFileError(f"--data: {path} is not a file")
    suffix = _suffix(path)
    if suffix not in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        raise InputFileError(f"--data: {path.name}: unknown format {suffix!r}; give a .csv, .csv.gz or .parquet file")
    if path.stat().st_size == 0:
        raise InputFileError(f"--data: {path} is empty (0 bytes); give a file with a header and data rows")
    try:
        if suffix in CSV_SUFFIXES:
            df = pd.read_csv(path, encoding="utf-8", encoding_errors="strict", low_memory=False)
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise InputFileError(f"--data: {path}: is not UTF-8 text: {_utf8_error(path)}; re-encode the file as "
                             "UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or save it as 'CSV UTF-8'") from exc
    except pd.errors.EmptyDataError as exc:
        raise InputFileError(f"--data: {path} is empty (no header, no rows); give a file with a header and "
                             "data rows") from exc
    except pd.errors.ParserError as exc:
        raise InputFileError(f"--data: {path}: cannot parse as CSV: {str(exc).strip()}") from exc
    except (ValueError, OSError, EOFError) as exc:  # pyarrow's errors derive from these; gzip too
        raise InputFileError(f"--data: cannot read {path} as {suffix}: {exc}") from exc
    if len(df) == 0:
        cols = ", ".join(map(str, list(df.columns)[:20])) or "none"
        raise InputFileError(f"--data: {path} has no data rows (columns: {cols}); give a file with data rows")
    return df


# ---------------------------------------------------------------------------------- models


class ColumnContract(BaseModel):
    """One column of the contract: its kind, role, nullability and the values it may take."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    role: Role
    nullable: bool
    null_rate: float = Field(ge=0.0, le=1.0)
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    description: str = ""


class DataContract(BaseModel):
    """What every batch of a use case must look like (written to `contract.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    time_col: str
    label_col: str
    entity_col: str | None = None
    objective: Objective
    columns: list[ColumnContract]
    rows: int = Field(ge=0)
    start: datetime
    end: datetime
    rows_per_day: float = Field(ge=0.0)
    # columns of the source file left out of the contract (e.g. extra datetime columns): a batch may
    # carry them; they are dropped explicitly, never checked
    ignored_columns: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DataContract:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate column(s) in the contract: {', '.join(dupes)}")
        for role, name in (("time", self.time_col), ("label", self.label_col), ("entity", self.entity_col)):
            if name is not None and name not in names:
                raise ValueError(f"{role} column {name!r} is not among the contract's columns")
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    def column(self, name: str) -> ColumnContract:
        """The column called `name` (KeyError naming the known columns otherwise)."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"column {name!r} is not in the contract; it has: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def features(self) -> list[ColumnContract]:
        return [c for c in self.columns if c.role == "feature"]


# ---------------------------------------------------------------------------------- inference


def _wrap(exc: BacktestInputError) -> InputFileError:
    return InputFileError(str(exc))


def _blank(raw: pd.Series) -> npt.NDArray[np.bool_]:
    """Missing cells: NA/None/NaN/NaT and empty or whitespace-only strings (CSV semantics)."""
    null = raw.isna().to_numpy(dtype=bool).copy()
    if raw.dtype == object or isinstance(raw.dtype, pd.StringDtype):
        values = raw.to_numpy(dtype=object)
        null |= np.fromiter((isinstance(v, str) and not v.strip() for v in values), dtype=bool, count=len(values))
    return null


def _value_kinds(values: pd.Series) -> pd.Series:
    """Per present value of an object column: 'boolean', 'number', 'text' or the Python type's name."""

    def kind(v: Any) -> str:
        if isinstance(v, bool | np.bool_):
            return "boolean"
        if isinstance(v, int | float | np.integer | np.floating):
            return "number"
        if isinstance(v, str):
            return "text"
        return type(v).__name__

    kinds = values.map(kind) if pd.api.types.infer_dtype(values, skipna=True) != "string" else \
        pd.Series("text", index=values.index)
    text = kinds == "text"
    if text.any():
        numeric = pd.to_numeric(values[text], errors="coerce").notna()
        kinds[numeric[numeric].index] = "number"
    return kinds


def _numeric_range(values: pd.Series, margin: float) -> tuple[float | None, float | None]:
    present = values.dropna().astype("float64")
    if present.empty:
        return None, None
    lo, hi = float(present.min()), float(present.max())
    span = hi - lo
    pad = margin * span if span > 0 else (0.1 * abs(lo) or 1.0)
    return lo - pad, hi + pad


def _refuse_infinite(values: pd.Series, name: str) -> None:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    inf = np.isinf(numbers.to_numpy())
    if inf.any():
        raise InputFileError(f"column {name!r}: {int(inf.sum())} infinite value(s), e.g. "
                             f"{_examples(values[inf])}; numbers must be finite: blank them or drop the column")


def _feature(raw: pd.Series, name: str, role: Role, *, margin: float, max_categories: int,
             notes: list[str], ignored: list[str]) -> ColumnContract | None:
    """The contract of one feature or entity column (None when it is left out, with a note)."""
    blank = _blank(raw)
    null_rate = float(blank.mean()) if len(raw) else 0.0
    base: dict[str, Any] = {"name": name, "role": role, "nullable": bool(blank.any()), "null_rate": null_rate}
    dtype = raw.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        if role == "entity":
            raise InputFileError(f"entity column {name!r}: holds dates; an entity is an id (customer, store, ...)")
        ignored.append(name)
        notes.append(f"column {name!r}: datetime column left out of the features (derive numbers from it, e.g. "
                     "hour or weekday, to use it)")
        return None
    if blank.all() and role == "feature":
        notes.append(f"column {name!r}: empty in every row; kept, but it carries no information")
    if role == "entity":
        return ColumnContract(kind="category", categories=None, **base)
    if pd.api.types.is_bool_dtype(dtype):
        return ColumnContract(kind="boolean", **base)
    if pd.api.types.is_integer_dtype(dtype):
        lo, hi = _numeric_range(raw, margin)
        return ColumnContract(kind="integer", min=lo, max=hi, **base)
    if pd.api.types.is_numeric_dtype(dtype):
        _refuse_infinite(raw, name)
        lo, hi = _numeric_range(raw, margin)
        return ColumnContract(kind="number", min=lo, max=hi, **base)
    # text / object / categorical columns
    values = raw.astype(object)[~blank]
    kinds = _value_kinds(values)
    distinct_kinds = list(dict.fromkeys(kinds))
    if len(distinct_kinds) > 1:
        parts = []
        for k in distinct_kinds:
            of_kind = values[kinds == k]
            parts.append(f"{len(of_kind)} {k} value(s), e.g. {_examples(of_kind, 2)}")
        raise InputFileError(f"column {name!r}: mixed types: {'; '.join(parts)}; a column holds one kind of value: "
                             "fix or blank the odd values, or drop the column")
    kind = distinct_kinds[0] if distinct_kinds else "text"
    if kind == "boolean":
        return ColumnContract(kind="boolean", **base)
    if kind == "number":
        numbers = pd.to_numeric(values, errors="coerce")
        _refuse_infinite(numbers, name)
        lo, hi = _numeric_range(numbers, margin)
        return ColumnContract(kind="number", min=lo, max=hi, **base)
    if kind != "text":
        raise InputFileError(f"column {name!r}: holds {kind} values (e.g. {_examples(values, 2)}); a column holds "
                             "numbers, booleans, text or dates")
    texts = values.astype(str)
    if len(texts) and texts.str.match(_DATE_LIKE).all():
        parsed = pd.to_datetime(texts, errors="coerce", utc=True, format="mixed")
        if parsed.notna().all():
            ignored.append(name)
            notes.append(f"column {name!r}: holds dates; left out of the features (derive numbers from it, e.g. "
                         "hour or weekday, to use it)")
            return None
    distinct = sorted(set(texts))
    if len(distinct) > max_categories:
        raise InputFileError(f"column {name!r}: text with {len(distinct)} distinct values (more than "
                             f"{max_categories}), e.g. {_examples(texts.drop_duplicates(), 3)}; too many to be a "
                             f"category: drop the column, or pass it as --entity-col {name} if it is an id")
    return ColumnContract(kind="category", categories=distinct, **base)


def _label(raw: pd.Series, name: str, regression: bool, notes: list[str]) -> ColumnContract:
    blank = _blank(raw)
    if blank.all():
        raise InputFileError(f"label column {name!r}: every value is missing; nothing to learn")
    cleaned = raw.where(~blank)
    try:
        values = regression_label(cleaned, name) if regression else binary_label(cleaned, name)
    except BacktestInputError as exc:
        raise _wrap(exc) from exc
    if regression:
        _refuse_infinite(values, name)
    distinct = pd.unique(values.dropna())
    if len(distinct) < 2:
        raise InputFileError(f"label column {name!r}: constant: every labelled row has the value "
                             f"{_plain(raw[~blank].iloc[0])!r}; nothing to learn")
    if blank.any():
        notes.append(f"label column {name!r}: {int(blank.sum())} row(s) without a label (allowed: labels arrive "
                     "later; they are not used for training)")
    return ColumnContract(name=name, kind="number" if regression else "boolean", role="label",
                          nullable=bool(blank.any()), null_rate=float(blank.mean()))


def infer_contract(df: pd.DataFrame, *, time_col: str, label_col: str, entity_col: str | None = None,
                   regression: bool = False, range_margin: float = 0.1, max_categories: int = 100) -> DataContract:
    """Infer a use case's contract from its history; refuse (InputFileError) a file that breaks a rule."""
    if range_margin < 0:
        raise ValueError("range_margin must be >= 0")
    names = [str(c) for c in df.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputFileError(f"duplicate column name(s): {', '.join(map(repr, dupes))}; rename them")
    df = df.copy()
    df.columns = pd.Index(names)
    df = df.reset_index(drop=True)
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    if len(df) == 0:
        raise InputFileError(f"the data has no rows (columns: {shown or 'none'})")
    roles = [("time", "--time-col", time_col), ("label", "--label-col", label_col)]
    if entity_col is not None:
        roles.append(("entity", "--entity-col", entity_col))
    for what, flag, wanted in roles:
        if wanted not in names:
            raise InputFileError(f"{what} column {wanted!r} ({flag}): not in the data; it has: {shown}")
    picked = [c for _, _, c in roles]
    if len(set(picked)) < len(picked):
        raise InputFileError(f"time, label and entity columns must differ; got {', '.join(map(repr, picked))}")
    if len(df) < 2:
        raise InputFileError("the data has one row; a contract and a model need a history of many rows")

    try:
        times = parse_time(df[time_col], time_col)
    except BacktestInputError as exc:
        raise _wrap(exc) from exc
    notes: list[str] = []
    ignored: list[str] = []
    columns = [ColumnContract(name=time_col, kind="datetime", role="time", nullable=False, null_rate=0.0)]
    columns.append(_label(df[label_col], label_col, regression, notes))
    for name in names:
        if name in (time_col, label_col):
            continue
        role: Role = "entity" if name == entity_col else "feature"
        found = _feature(df[name], name, role, margin=range_margin, max_categories=max_categories, notes=notes,
                         ignored=ignored)
        if found is not None:
            columns.append(found)
    if not any(c.role == "feature" for c in columns):
        raise InputFileError(f"the data has no feature columns besides {time_col!r}, {label_col!r}"
                             f"{f' and {entity_col!r}' if entity_col else ''}; a model needs features")

    start, end = times.min(), times.max()
    days = (end - start).total_seconds() / 86400.0
    return DataContract(time_col=time_col, label_col=label_col, entity_col=entity_col,
                        objective="regression" if regression else "binary", columns=columns, rows=len(df),
                        start=start.to_pydatetime(), end=end.to_pydatetime(),
                        rows_per_day=float(len(df) / max(1.0, days)), ignored_columns=ignored, notes=notes)


# ---------------------------------------------------------------------------------- batches


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
