"""Serving request and response models built from a use case's spec (`usecase.yaml` `request:`).

One BentoML service definition serves any use case: the body models are generated here, so
`/docs` shows that use case's own fields, ranges and categories. Validation follows the house rules
of `retrain.serving_schema`: strict types (a number sent as a string is refused, never coerced),
unknown keys refused, naive datetimes refused (`timezone_required`) and aware ones converted to
UTC, categories checked against the spec (`unknown_category`). Bodies are validated from JSON
(`model_validate_json`, as BentoML does), where strict mode reads ISO 8601 strings as datetimes.

A field whose name is not a plain Python identifier (or would shadow a pydantic attribute) is held
under a safe attribute name with the spec's name as its alias; the models serialize by alias, so
`row.model_dump()` always gives the spec's names.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import math
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticCustomError

from retrain.serving.models import RANGE_TEXT, served_time
from retrain.usecase.spec import RequestField, UseCaseSpec

TEXT_MAX_LENGTH = 256
CATEGORIES_SHOWN = 10
EXAMPLE_DATETIME = "2024-01-01T00:00:00Z"
ROWS_FIELD = "rows"

_ITEM_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, protected_namespaces=(),
                          serialize_by_alias=True)
_OUT_CONFIG = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class RequestModels:
    """The four pydantic models of one use case's `/predict`: row, body, per-row answer, answer body."""

    item: type[BaseModel]
    request: type[BaseModel]
    prediction: type[BaseModel]
    response: type[BaseModel]


_CACHE: dict[tuple[str, str, int], RequestModels] = {}
_LOCK = threading.Lock()


def class_prefix(spec: UseCaseSpec) -> str:
    """CamelCase model-name prefix of a use case (`bike_sharing` -> `BikeSharing`)."""
    return "".join(part.capitalize() for part in spec.name.split("_") if part)


def _fingerprint(spec: UseCaseSpec) -> str:
    """Hash of everything the generated models depend on besides the name."""
    payload = {"request": [f.model_dump(mode="json") for f in spec.request], "objective": spec.objective,
               "description": spec.description, "id_col": spec.data.id_col}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _attr_name(name: str, index: int) -> str:
    """The Python attribute holding field `name` (the name itself when that is safe)."""
    safe = (_IDENTIFIER.match(name) is not None and not keyword.iskeyword(name)
            and not hasattr(BaseModel, name) and name != ROWS_FIELD)
    return name if safe else f"field_{index}"


def _category_check(categories: list[str]) -> Callable[[str], str]:
    allowed = frozenset(categories)
    shown = ", ".join(categories[:CATEGORIES_SHOWN]) + (", ..." if len(categories) > CATEGORIES_SHOWN else "")

    def check(value: str) -> str:
        if value not in allowed:
            raise PydanticCustomError(
                "unknown_category", "unknown category: expected one of {allowed} ({n} allowed values)",
                {"allowed": shown, "n": len(categories)},
            )
        return value

    return check


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PydanticCustomError(
            "timezone_required",
            "datetime '{value}' has no UTC offset: send ISO 8601 with an offset (e.g. 2024-01-01T05:15:00-05:00 "
            "or ...Z); naive times are refused",
            {"value": value.isoformat()},
        )
    return served_time(value)


def _example(f: RequestField) -> Any:
    """A valid JSON value for field `f`."""
    if f.kind in ("number", "integer"):
        lo, hi = f.min, f.max
        if lo is not None and hi is not None:
            mid = (lo + hi) / 2
        elif lo is not None:
            mid = lo if f.kind == "number" else lo + 1
        elif hi is not None:
            mid = hi
        else:
            mid = 1.0
        if f.kind == "number":
            return float(mid)
        value = math.floor(mid)
        if lo is not None and value < lo:
            value = math.ceil(lo)
        return int(value)
    if f.kind == "boolean":
        return True
    if f.kind == "category":
        return f.categories[0] if f.categories else "A"
    if f.kind == "text":
        return "example"
    return EXAMPLE_DATETIME


def _description(f: RequestField) -> str:
    text = f.description.strip() or f.name
    if f.kind == "datetime":
        text += (" (ISO 8601 WITH a UTC offset, e.g. 2024-01-01T05:15:00-05:00 or ...Z; naive times are refused; "
                 f"{RANGE_TEXT})")
    elif f.kind == "category" and f.categories:
        text += f" (one of {len(f.categories)} categories)"
    return text


def _bound(value: float | None, kind: str, *, upper: bool = False) -> float | int | None:
    """A min/max as the field's type: an integer field's bound as the integer the range allows (an
    inferred range with a margin, -0.1..1.1, admits 0..1)."""
    if value is None or kind != "integer":
        return value
    return int(math.floor(value)) if upper else int(math.ceil(value))


def _field(f: RequestField, index: int) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one request field for `create_model`."""
    alias = None if _attr_name(f.name, index) == f.name else f.name
    extra: dict[str, Any] = {}
    kind: Any
    if f.kind == "number":
        kind = Annotated[float, Field(ge=f.min, le=f.max, allow_inf_nan=False)]
    elif f.kind == "integer":
        kind = Annotated[int, Field(ge=_bound(f.min, "integer"), le=_bound(f.max, "integer", upper=True))]
    elif f.kind == "boolean":
        kind = bool
    elif f.kind == "category":
        if f.categories:
            kind = Annotated[str, AfterValidator(_category_check(list(f.categories)))]
            extra["enum"] = list(f.categories)
        else:
            kind = Annotated[str, Field(max_length=TEXT_MAX_LENGTH)]
    elif f.kind == "text":
        kind = Annotated[str, Field(max_length=TEXT_MAX_LENGTH)]
    else:
        kind = Annotated[datetime, AfterValidator(_to_utc)]
    annotation: Any = kind if f.required else kind | None
    info = Field(
        default=... if f.required else None, alias=alias, description=_description(f), examples=[_example(f)],
        json_schema_extra=extra or None,
    )
    return annotation, info


def example_row(spec: UseCaseSpec) -> dict[str, Any]:
    """A valid request row (JSON values, keyed by the spec's field names), for docs and tests."""
    return {f.name: _example(f) for f in spec.request}


def _build(spec: UseCaseSpec, max_batch: int) -> RequestModels:
    prefix = class_prefix(spec)
    fields: dict[str, Any] = {_attr_name(f.name, i): _field(f, i) for i, f in enumerate(spec.request)}
    item = create_model(
        f"{prefix}Row", __config__=_ITEM_CONFIG, __doc__=spec.description or f"One {spec.name} row to score.",
        __module__=__name__, **fields,
    )
    request = create_model(
        f"{prefix}PredictRequest", __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=f"`POST /predict` body for {spec.name}: a non-empty batch of at most {max_batch} rows.",
        __module__=__name__,
        rows=(list[item], Field(min_length=1, max_length=max_batch,
                                description=f"Rows to score (1 to {max_batch}).",
                                examples=[[example_row(spec)]])),
    )
    if spec.objective == "binary":
        score_doc = "Probability of the positive class."
        label_doc = "score >= the decision threshold."
    else:
        score_doc = "The predicted value."
        label_doc = "Always null for a regression use case."
    id_doc = (f"The row's `{spec.data.id_col}` when the request carries it, else an id generated for this "
              "request." if spec.data.id_col else "An id generated for this row of this request.")
    prediction = create_model(
        f"{prefix}Prediction", __config__=_OUT_CONFIG, __doc__=f"The answer for one {spec.name} row.",
        __module__=__name__,
        row_id=(str, Field(description=id_doc)),
        score=(float, Field(description=score_doc)),
        predicted_label=(bool | None, Field(default=None, description=label_doc)),
        model_version=(str, Field(description="Registry version of the model that produced the score.")),
        missing_features=(list[str], Field(description="Model inputs the online store had no value for.")),
    )
    response = create_model(
        f"{prefix}PredictResponse", __config__=_OUT_CONFIG, __doc__=f"`POST /predict` answer for {spec.name}.",
        __module__=__name__,
        request_id=(str, Field(description="Id of this request (also in the prediction log).")),
        model_name=(str, Field(description="Registered model name (the use case).")),
        model_version=(str, Field(description="Registry version of the champion that answered.")),
        predictions=(list[prediction], Field(description="One answer per row, in request order.")),
    )
    return RequestModels(item=item, request=request, prediction=prediction, response=response)


def request_models(spec: UseCaseSpec, *, max_batch: int = 1000) -> RequestModels:
    """The request/response models of `spec` (cached: same spec and limit give the same classes)."""
    if max_batch < 1:
        raise ValueError(f"max_batch {max_batch}: must be >= 1")
    key = (spec.name, _fingerprint(spec), max_batch)
    with _LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = _CACHE[key] = _build(spec, max_batch)
    return found


def row_id(spec: UseCaseSpec, row: Mapping[str, Any], *, request_id: str | None = None, index: int = 0) -> str:
    """The answer's `row_id`: the spec's id column from the row when given, else a generated id."""
    if spec.data.id_col is not None and row.get(spec.data.id_col) is not None:
        return str(row[spec.data.id_col])
    return f"{request_id}-{index}" if request_id else uuid.uuid4().hex


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as `{"loc", "type", "msg"}` items: the field path and rule, never the input."""
    return [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False, include_context=False)]
