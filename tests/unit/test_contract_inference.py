"""The use-case data contract: reading a user's file, inferring the contract, refusing bad files with
messages that name the column and the rule, and checking batches against the contract."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from retrain.usecase.batch_check import BatchCheck, check_batch, pandera_schema
from retrain.usecase.contract import (
    ColumnContract,
    DataContract,
    InputFileError,
    infer_contract,
    read_user_file,
)


def daily_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    amount = np.round(rng.uniform(10.0, 110.0, n), 2)
    amount[[i for i in (3, 17) if i < n]] = np.nan
    amount[0], amount[1] = 10.0, 110.0  # pin the range: 10..110, span 100
    return pd.DataFrame({
        "ts": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "y": rng.integers(0, 2, n),
        "amount": amount,
        "count": np.arange(n) % 5,  # 0..4
        "color": np.array(["red", "green", "blue"])[np.arange(n) % 3],
        "flag": np.arange(n) % 2 == 0,
        "customer": [f"C{i:04d}" for i in range(n)],
        "signup": pd.date_range("2023-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
    })


def hourly_frame(n: int = 48) -> pd.DataFrame:
    return pd.DataFrame({
        "hour": pd.date_range("2024-03-01T00:00:00Z", periods=n, freq="h"),
        "load": np.linspace(100.0, 200.0, n),
        "temp": np.full(n, 20.0),
        "zero": np.zeros(n),
        "site": np.where(np.arange(n) % 4 == 0, None, "north"),
    })


def infer_daily(**kw: object) -> DataContract:
    return infer_contract(daily_frame(), time_col="ts", label_col="y", entity_col="customer", **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- inference


def test_infers_kinds_ranges_categories_and_null_rates_daily() -> None:
    c = infer_daily()
    assert c.objective == "binary" and c.rows == 60 and c.entity_col == "customer"
    kinds = {col.name: (col.kind, col.role) for col in c.columns}
    assert kinds == {
        "ts": ("datetime", "time"), "y": ("boolean", "label"), "amount": ("number", "feature"),
        "count": ("integer", "feature"), "color": ("category", "feature"), "flag": ("boolean", "feature"),
        "customer": ("category", "entity"),
    }
    amount = c.column("amount")
    assert amount.min == pytest.approx(0.0) and amount.max == pytest.approx(120.0)  # 10..110 widened by 10
    assert amount.nullable and amount.null_rate == pytest.approx(2 / 60)
    count = c.column("count")
    assert count.min == pytest.approx(-0.4) and count.max == pytest.approx(4.4) and not count.nullable
    assert c.column("color").categories == ["blue", "green", "red"]
    assert c.column("customer").categories is None  # an entity has no category list
    assert c.column("flag").min is None and c.column("flag").null_rate == 0.0
    # the extra datetime column is left out, with a note
    assert c.ignored_columns == ["signup"]
    assert any("signup" in note for note in c.notes)
    assert c.start == datetime(2024, 1, 1, tzinfo=UTC) and c.end == datetime(2024, 2, 29, tzinfo=UTC)
    assert c.rows_per_day == pytest.approx(60 / 59)
    with pytest.raises(KeyError, match="nope"):
        c.column("nope")


def test_infers_hourly_regression_frame() -> None:
    df = hourly_frame()
    c = infer_contract(df, time_col="hour", label_col="load", regression=True, range_margin=0.5)
    assert c.objective == "regression" and c.column("load").kind == "number"
    assert c.rows_per_day == pytest.approx(48 / (47 / 24))  # 48 rows over 47 hours
    half_day = infer_contract(df.head(12), time_col="hour", label_col="load", regression=True)
    assert half_day.rows_per_day == pytest.approx(12.0)  # a span under a day counts as one day
    temp = c.column("temp")  # constant: 10% of |value|
    assert (temp.min, temp.max) == (pytest.approx(18.0), pytest.approx(22.0))
    zero = c.column("zero")  # constant 0: a margin of 1
    assert (zero.min, zero.max) == (pytest.approx(-1.0), pytest.approx(1.0))
    site = c.column("site")
    assert site.kind == "category" and site.categories == ["north"]
    assert site.nullable and site.null_rate == pytest.approx(0.25)

    days = pd.concat([df.assign(hour=df["hour"] + pd.Timedelta(days=d)) for d in range(0, 10, 2)],
                     ignore_index=True)
    many = infer_contract(days, time_col="hour", label_col="load", regression=True)
    span_days = (many.end - many.start).total_seconds() / 86400
    assert many.rows_per_day == pytest.approx(len(days) / span_days)


def test_contract_round_trips_through_yaml(tmp_path: Path) -> None:
    c = infer_daily()
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(c.model_dump(mode="json"), sort_keys=False))
    back = DataContract.model_validate(yaml.safe_load(path.read_text()))
    assert back == c
    with pytest.raises(ValueError, match="extra"):
        ColumnContract.model_validate({**c.column("amount").model_dump(mode="json"), "colour": "x"})


def test_reads_csv_gz_and_parquet(tmp_path: Path) -> None:
    df = daily_frame(5)
    df.to_csv(tmp_path / "h.csv.gz", index=False)
    df.to_parquet(tmp_path / "h.parquet")
    assert len(read_user_file(tmp_path / "h.csv.gz")) == 5
    assert list(read_user_file(tmp_path / "h.parquet").columns) == list(df.columns)


def test_high_cardinality_text_is_refused_unless_it_is_the_entity() -> None:
    refused = r"column 'customer': text with 60 distinct.*more than 50.*--entity-col customer"
    with pytest.raises(InputFileError, match=refused):
        infer_contract(daily_frame(), time_col="ts", label_col="y", max_categories=50)
    assert infer_daily(max_categories=3).column("color").categories == ["blue", "green", "red"]


# ---------------------------------------------------------------------------------- bad files


def write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def infer_file(path: Path, **kw: object) -> DataContract:
    args: dict = {"time_col": "ts", "label_col": "y", **kw}
    return infer_contract(read_user_file(path), **args)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        read_user_file(tmp_path / "nope.csv")
    with pytest.raises(InputFileError, match=r"unknown format '\.xlsx'"):
        read_user_file(write(tmp_path, "h.xlsx", "ts,y\n"))


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"empty \(0 bytes\)"):
        read_user_file(write(tmp_path, "h.csv", b""))
    with pytest.raises(InputFileError, match="empty"):
        read_user_file(write(tmp_path, "blank.csv", "\n\n"))


def test_header_only(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"no data rows \(columns: ts, y\)"):
        read_user_file(write(tmp_path, "h.csv", "ts,y\n"))


def test_parse_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot parse as CSV.*line 3"):
        read_user_file(write(tmp_path, "h.csv", "ts,y\n2024-01-01,1\n2024-01-02,0,7,8\n"))


def test_non_utf8_bytes(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"not UTF-8.*byte offset 16 \(line 2\).*re-encode the file as UTF-8"):
        read_user_file(write(tmp_path, "h.csv", b"ts,y\n2020-01-01,\xff\n"))


def test_no_time_column(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "when,y,x\n2024-01-01,1,3\n2024-01-02,0,4\n")
    with pytest.raises(InputFileError, match=r"time column 'ts' \(--time-col\): not in the data; it has: when, y, x"):
        infer_file(path)


def test_unparseable_time_with_row_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,1,3\nsoon,0,4\n2024-01-03,1,5\nlater,0,6\n")
    with pytest.raises(InputFileError, match=r"time column 'ts'.*2 value\(s\) are not dates.*row 2 \('soon'\), "
                                             r"row 4 \('later'\)"):
        infer_file(path)
    blank = write(tmp_path, "b.csv", "ts,y,x\n2024-01-01,1,3\n,0,4\n")
    with pytest.raises(InputFileError, match=r"time column 'ts'.*empty value.*row 2"):
        infer_file(blank)


def test_time_column_of_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n1,1,3\n2,0,4\n")
    with pytest.raises(InputFileError, match=r"time column 'ts': holds numbers"):
        infer_file(path)


def test_label_all_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,,3\n2024-01-02,,4\n")
    with pytest.raises(InputFileError, match=r"label column 'y': every value is missing"):
        infer_file(path)


def test_label_constant(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,1,3\n2024-01-02,1,4\n2024-01-03,,5\n")
    with pytest.raises(InputFileError, match=r"label column 'y': constant.*nothing to learn"):
        infer_file(path)


def test_label_not_binary_suggests_regression(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,1,3\n2024-01-02,7.5,4\n")
    with pytest.raises(InputFileError, match=r"label column 'y': is not binary.*row 2 \(7\.5\).*--regression"):
        infer_file(path)
    assert infer_file(path, regression=True).objective == "regression"


def test_one_row(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,1,3\n")
    with pytest.raises(InputFileError, match="one row"):
        infer_file(path)


def test_mixed_types(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,1,1\n2024-01-02,0,2\n2024-01-03,1,x\n2024-01-04,0,3.5\n")
    with pytest.raises(InputFileError, match=r"column 'x': mixed types: 3 number value\(s\), e\.g\. row 1 \('1'\), "
                                             r"row 2 \('2'\); 1 text value\(s\), e\.g\. row 3 \('x'\)"):
        infer_file(path)
    fine = write(tmp_path, "f.csv", "ts,y,x\n2024-01-01,1,a1\n2024-01-02,0,b2\n")
    assert infer_file(fine).column("x").categories == ["a1", "b2"]


def test_missing_entity_column(tmp_path: Path) -> None:
    path = write(tmp_path, "h.csv", "ts,y,x\n2024-01-01,1,3\n2024-01-02,0,4\n")
    with pytest.raises(InputFileError, match=r"entity column 'store' \(--entity-col\): not in the data"):
        infer_file(path, entity_col="store")


# ---------------------------------------------------------------------------------- batches


def reconciles(check: BatchCheck, n: int) -> None:
    assert len(check.accepted) + len(check.rejected_rows) == n
    assert not set(check.accepted.index + 1) & set(check.rejected_rows)
    for r in check.rejected:
        assert set(r) == {"row", "field", "rule", "reason", "value"}
        assert r["reason"].startswith(f"{r['field']}: ")


def test_check_batch_quarantines_bad_rows_and_accepts_the_rest() -> None:
    c = infer_daily()
    batch = daily_frame(8).drop(columns=["signup"]).astype({"amount": object, "count": object, "flag": object})
    batch["y"] = batch["y"].astype(object)
    batch.loc[1, "amount"] = 500.0          # out of range
    batch.loc[2, "color"] = "purple"        # unknown category
    batch.loc[3, "count"] = "lots"          # wrong type
    batch.loc[4, "ts"] = "not a date"       # time must parse
    batch.loc[5, "y"] = None                # unlabelled: allowed
    batch.loc[6, "flag"] = None             # null where the contract saw none
    batch.loc[7, "amount"] = -50.0          # out of range ...
    batch.loc[7, "color"] = "pink"          # ... and unknown category: two reasons, one row

    check = check_batch(batch, c)
    reconciles(check, len(batch))
    got = {(r["row"], r["field"], r["rule"]) for r in check.rejected}
    assert got == {(2, "amount", "range"), (3, "color", "category"), (4, "count", "type"), (5, "ts", "type"),
                   (7, "flag", "not_null"), (8, "amount", "range"), (8, "color", "category")}
    by_row = {(r["row"], r["field"]): r for r in check.rejected}
    assert by_row[(2, "amount")]["reason"] == "amount: must be between 0 and 120 (got 500.0)"
    assert by_row[(2, "amount")]["value"] == 500.0
    assert "known categories" in by_row[(3, "color")]["reason"] and by_row[(3, "color")]["value"] == "purple"
    assert by_row[(4, "count")]["reason"] == "count: must be an integer (got 'lots')"
    assert by_row[(7, "flag")]["value"] is None
    assert list(check.accepted.index) == [0, 5]
    acc = check.accepted
    assert acc["y"].isna().tolist() == [False, True]
    assert str(acc["ts"].dtype) == "datetime64[ns, UTC]" and str(acc["count"].dtype) == "Int64"
    pandera_schema(c).validate(acc)  # what is accepted passes the contract's schema


def test_check_batch_reads_types_from_text_and_regression_labels() -> None:
    c = infer_contract(hourly_frame(), time_col="hour", label_col="load", regression=True)
    batch = pd.DataFrame({
        "hour": ["2024-03-05T01:00:00Z", "2024-03-05T02:00:00Z", "2024-03-05T03:00:00Z", "2024-03-05T04:00:00Z"],
        "load": ["150", None, "high", "120.5"],
        "temp": ["20.5", "21", "twenty", ""],
        "zero": [0, 0, 0, 0],
        "site": ["north", None, "north", "south"],
    })
    check = check_batch(batch, c)
    reconciles(check, 4)
    assert {(r["row"], r["field"], r["rule"]) for r in check.rejected} == {
        (3, "load", "type"), (3, "temp", "type"), (4, "temp", "not_null"), (4, "site", "category")}
    assert check.accepted["load"].tolist()[0] == 150.0 and np.isnan(check.accepted["load"].tolist()[1])


def test_check_batch_refuses_unknown_and_missing_columns() -> None:
    c = infer_daily()
    batch = daily_frame(4)
    assert len(check_batch(batch, c).accepted) == 4  # ignored datetime column is fine
    with pytest.raises(InputFileError, match=r"unknown column\(s\) 'extra'"):
        check_batch(batch.assign(extra=1), c)
    with pytest.raises(InputFileError, match=r"missing contract column\(s\) 'color', 'flag'"):
        check_batch(batch.drop(columns=["color", "flag"]), c)


def test_pandera_schema_from_contract() -> None:
    schema = pandera_schema(infer_daily())
    assert set(schema.columns) == {"ts", "y", "amount", "count", "color", "flag", "customer"}
    assert schema.columns["y"].nullable and not schema.columns["ts"].nullable
    assert [ch.name for ch in schema.columns["amount"].checks] == ["in_range"]
    assert [ch.name for ch in schema.columns["color"].checks] == ["isin"]
