"""Serving models generated from a use-case spec: schema per use case, strict rules, field-naming errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from retrain.core.config import base_settings
from retrain.usecase.catalog import load_usecase
from retrain.usecase.request import example_row, request_models, row_id, validation_errors
from retrain.usecase.spec import UseCaseSpec

MANY = [f"c{i:02d}" for i in range(12)]


def _every_kind() -> UseCaseSpec:
    return UseCaseSpec.model_validate({
        "name": "every_kind",
        "description": "A test use case with one request field of every kind.",
        "objective": "binary",
        "data": {"path": "history.csv", "time_col": "at", "id_col": "order_id"},
        "label": {"column": "y"},
        "features": {"service": "every_kind_v1", "names": ["amount"]},
        "request": [
            {"name": "amount", "kind": "number", "min": 0, "max": 100, "description": "Order amount"},
            {"name": "count", "kind": "integer", "min": 1, "max": 10},
            {"name": "flag", "kind": "boolean", "description": "A yes/no input"},
            {"name": "colour", "kind": "category", "categories": ["red", "green", "blue"]},
            {"name": "note", "kind": "text", "required": False, "description": "Free text"},
            {"name": "at", "kind": "datetime", "description": "Event time"},
            {"name": "order_id", "kind": "text", "required": False},
            {"name": "store-code", "kind": "category", "required": False, "categories": MANY},
            {"name": "copy", "kind": "integer", "required": False},
        ],
    })


SPECS: dict[str, UseCaseSpec] = {
    "flight_delay": load_usecase(base_settings(), "flight_delay"),
    "bike_sharing": load_usecase(base_settings(), "bike_sharing"),
    "every_kind": _every_kind(),
}
NAMES = list(SPECS)
JSON_TYPE = {"number": "number", "integer": "integer", "boolean": "boolean", "category": "string",
             "text": "string", "datetime": "string"}


def _body(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"rows": rows})


def _errors(name: str, rows: list[dict[str, Any]], max_batch: int = 1000) -> list[dict[str, Any]]:
    models = request_models(SPECS[name], max_batch=max_batch)
    with pytest.raises(ValidationError) as info:
        models.request.model_validate_json(_body(rows))
    return validation_errors(info.value)


def _bad_row(name: str, field: str, value: Any) -> list[dict[str, Any]]:
    """Errors for a batch whose second row has `field` set to `value` (... drops it)."""
    good = example_row(SPECS[name])
    bad = {k: v for k, v in {**good, field: value}.items() if v is not ...}
    return _errors(name, [good, bad])


def _field(name: str, *kinds: str, ranged: bool = False, categories: bool = False) -> Any:
    for f in SPECS[name].request:
        if (f.kind in kinds and (not ranged or f.max is not None or f.min is not None)
                and (not categories or f.categories)):
            return f
    return None


def _cases(*kinds: str, **rule: bool) -> list[str]:
    return [n for n in NAMES if _field(n, *kinds, **rule) is not None]


def _item_schema(name: str) -> dict[str, Any]:
    schema = request_models(SPECS[name]).request.model_json_schema()
    ref = schema["properties"]["rows"]["items"]["$ref"].rsplit("/", 1)[-1]
    return dict(schema["$defs"][ref])


def _only(errors: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("name", NAMES)
def test_example_row_validates_and_dumps_under_the_spec_names(name: str) -> None:
    spec = SPECS[name]
    row = example_row(spec)
    assert list(row) == [f.name for f in spec.request]
    req = request_models(spec).request.model_validate_json(_body([row, row]))
    rows = req.rows  # type: ignore[attr-defined]
    assert len(rows) == 2
    assert set(rows[0].model_dump()) == set(row)
    for f in spec.request:
        if f.kind == "datetime":
            assert rows[0].model_dump()[f.name] == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("name", NAMES)
def test_schema_lists_exactly_the_spec_fields(name: str) -> None:
    spec = SPECS[name]
    item = _item_schema(name)
    assert item["title"] == "".join(p.capitalize() for p in name.split("_")) + "Row"
    assert item["description"] == spec.description
    assert item["additionalProperties"] is False
    props = item["properties"]
    assert list(props) == [f.name for f in spec.request]
    assert sorted(item.get("required", [])) == sorted(f.name for f in spec.request if f.required)
    for f in spec.request:
        prop = props[f.name]
        typed = prop if f.required else next(a for a in prop["anyOf"] if a["type"] != "null")
        assert typed["type"] == JSON_TYPE[f.kind], f.name
        if not f.required:
            assert {"type": "null"} in prop["anyOf"] and prop["default"] is None
        if f.min is not None:
            assert typed["minimum"] == f.min
        if f.max is not None:
            assert typed["maximum"] == f.max
        if f.categories:
            assert prop["enum"] == f.categories
        if f.kind == "datetime":
            assert typed["format"] == "date-time" and "UTC offset" in prop["description"]
        if f.description:
            assert prop["description"].startswith(f.description)
        assert prop["examples"] == [example_row(spec)[f.name]]
    rows = request_models(spec, max_batch=7).request.model_json_schema()["properties"]["rows"]
    assert (rows["minItems"], rows["maxItems"]) == (1, 7)


@pytest.mark.parametrize("name", NAMES)
def test_response_models_have_a_json_schema(name: str) -> None:
    spec = SPECS[name]
    models = request_models(spec)
    schema = models.response.model_json_schema()
    assert set(schema["properties"]) == {"request_id", "model_name", "model_version", "predictions"}
    pred = schema["$defs"][models.prediction.__name__]
    assert set(pred["properties"]) == {"row_id", "score", "predicted_label", "model_version", "missing_features"}
    positive = "positive class" in pred["properties"]["score"]["description"]
    assert positive == (spec.objective == "binary")
    label = 0.7 >= 0.5 if spec.objective == "binary" else None
    answer = models.response(request_id="r1", model_name=name, model_version="3", predictions=[
        models.prediction(row_id="r1-0", score=0.7, predicted_label=label, model_version="3", missing_features=[])])
    assert json.loads(answer.model_dump_json())["predictions"][0]["predicted_label"] == label


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_is_refused(name: str) -> None:
    err = _only(_bad_row(name, "not_a_field", 1))
    assert (err["loc"], err["type"]) == (["rows", 1, "not_a_field"], "extra_forbidden")


@pytest.mark.parametrize("name", NAMES)
def test_missing_required_field_is_named(name: str) -> None:
    field = next(f.name for f in SPECS[name].request if f.required)
    err = _only(_bad_row(name, field, ...))
    assert (err["loc"], err["type"]) == (["rows", 1, field], "missing")


@pytest.mark.parametrize("name", _cases("number", "integer", ranged=True))
def test_number_out_of_range(name: str) -> None:
    f = _field(name, "number", "integer", ranged=True)
    value, rule = (f.max + 1, "less_than_equal") if f.max is not None else (f.min - 1, "greater_than_equal")
    err = _only(_bad_row(name, f.name, int(value) if f.kind == "integer" else float(value)))
    assert (err["loc"], err["type"]) == (["rows", 1, f.name], rule)


@pytest.mark.parametrize("name", _cases("number", "integer"))
def test_string_for_a_number_is_not_coerced(name: str) -> None:
    f = _field(name, "number", "integer")
    err = _only(_bad_row(name, f.name, "5"))
    assert (err["loc"], err["type"]) == (["rows", 1, f.name], "float_type" if f.kind == "number" else "int_type")


@pytest.mark.parametrize("name", _cases("category", categories=True))
def test_unknown_category_lists_the_allowed_values(name: str) -> None:
    f = _field(name, "category", categories=True)
    err = _only(_bad_row(name, f.name, "s3cret-value"))
    assert (err["loc"], err["type"]) == (["rows", 1, f.name], "unknown_category")
    assert all(c in err["msg"] for c in f.categories[:10]) and "s3cret" not in err["msg"]


@pytest.mark.parametrize("name", _cases("datetime"))
def test_naive_datetime_is_refused(name: str) -> None:
    f = _field(name, "datetime")
    err = _only(_bad_row(name, f.name, "2024-01-01T05:00:00"))
    assert (err["loc"], err["type"]) == (["rows", 1, f.name], "timezone_required")
    assert "UTC offset" in err["msg"]


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_oversized_batches_are_refused(name: str) -> None:
    err = _only(_errors(name, []))
    assert (err["loc"], err["type"]) == (["rows"], "too_short")
    row = example_row(SPECS[name])
    err = _only(_errors(name, [row] * 3, max_batch=2))
    assert (err["loc"], err["type"]) == (["rows"], "too_long")
    request_models(SPECS[name], max_batch=2).request.model_validate_json(_body([row] * 2))


@pytest.mark.parametrize("name", NAMES)
def test_models_are_cached_per_spec_and_limit(name: str) -> None:
    spec = SPECS[name]
    first = request_models(spec)
    assert request_models(spec) is first
    reread = load_usecase(base_settings(), name) if name != "every_kind" else _every_kind()
    assert request_models(reread) is first
    assert request_models(spec, max_batch=5).item is not first.item
    changed = spec.model_copy(update={"request": spec.request[:-1]})
    assert request_models(changed).item is not first.item


def test_every_kind_rules_and_normalization() -> None:
    models = request_models(SPECS["every_kind"])
    row = {**example_row(SPECS["every_kind"]), "at": "2024-03-01T05:00:00-05:00", "note": None}
    del row["order_id"]
    item = models.request.model_validate_json(_body([row])).rows[0]  # type: ignore[attr-defined]
    dumped = item.model_dump()
    assert dumped["at"] == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert dumped["note"] is None and dumped["order_id"] is None
    assert dumped["store-code"] == "c00" and "store-code" in models.item.model_json_schema()["properties"]
    assert _only(_bad_row("every_kind", "flag", 1))["type"] == "bool_type"
    assert _only(_bad_row("every_kind", "count", 2.0))["type"] == "int_type"
    models.request.model_validate_json(_body([{**row, "amount": 7}]))  # an int is a valid number
    assert _only(_bad_row("every_kind", "note", "x" * 257))["type"] == "string_too_long"
    err = _only(_bad_row("every_kind", "store-code", "zz"))
    assert err["loc"] == ["rows", 1, "store-code"] and "c09, ..." in err["msg"] and "c10" not in err["msg"]
    assert "12 allowed" in err["msg"]
    assert _only(_bad_row("every_kind", "amount", float("nan")))["type"] == "finite_number"


def test_validation_errors_keep_loc_and_drop_the_input() -> None:
    errors = _bad_row("every_kind", "note", "x" * 300)
    assert errors == [{"loc": ["rows", 1, "note"], "type": "string_too_long",
                       "msg": "String should have at most 256 characters"}]


def test_row_id_uses_the_id_column_else_a_generated_one() -> None:
    spec = SPECS["every_kind"]
    assert row_id(spec, {"order_id": "o-17"}, request_id="r", index=3) == "o-17"
    assert row_id(spec, {"order_id": None}, request_id="r", index=3) == "r-3"
    assert row_id(SPECS["bike_sharing"], {"ts": "x"}, request_id="r", index=0) == "r-0"
    assert len(row_id(SPECS["bike_sharing"], {})) == 32


def test_integer_field_with_an_inferred_fractional_range() -> None:
    """`retrain init` widens ranges by a margin (a 0/1 column becomes -0.1..1.1): the integer field
    admits the integers inside, found by serving a scaffolded use case."""
    spec = UseCaseSpec.model_validate({
        "name": "promo_case", "objective": "regression",
        "data": {"path": "h.csv", "time_col": "ts"}, "label": {"column": "y"},
        "features": {"service": "promo_case_v1", "names": ["promo"]},
        "request": [{"name": "ts", "kind": "datetime"}, {"name": "promo", "kind": "integer", "min": -0.1, "max": 1.1}],
    })
    models = request_models(spec)
    for ok in (0, 1):
        models.request.model_validate_json(_body([{"ts": "2024-01-01T00:00:00Z", "promo": ok}]))
    for bad in (-1, 2):
        with pytest.raises(ValidationError):
            models.request.model_validate_json(_body([{"ts": "2024-01-01T00:00:00Z", "promo": bad}]))
    assert example_row(spec)["promo"] in (0, 1)
