"""The data contract of a use case: inferred once from the user's file (`retrain init`), written to
`contract.yaml` in the use-case folder, and used to check every later batch.

Inference refuses a file it cannot trust (no rows, a time column that does not parse, a label with
nothing to learn, a column of mixed types, ...) with an `InputFileError` that names the column and
the rule, with 1-based data-row numbers and examples. Batches are checked against it by
`retrain.usecase.batch_check`.
"""

from __future__ import annotations

import codecs
import gzip
import re
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrain.usecase.frames import (
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
    times_per_day: float | None = Field(default=None, ge=0.0, description="Distinct event times a day: the "
                                        "data's time resolution (many entities at one weekly time: 1/7).")
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
                        rows_per_day=float(len(df) / max(1.0, days)),
                        times_per_day=float(times.nunique() / max(1.0, days)), ignored_columns=ignored, notes=notes)
