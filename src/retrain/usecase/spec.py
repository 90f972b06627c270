"""The use-case spec: everything domain-specific about one model, declared in `usecase.yaml`.

A use case is one folder (`usecases/<name>/`): this spec, its Feast objects, its raw-batch contract
and, optionally, a Python data module. The engine reads the domain from here (label, time, entity,
request fields, slices, objective, model parameters, settings overrides) instead of hard-coding it.
Validation errors name the field (`label.delay_hours: ...`), as pydantic reports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Objective = Literal["binary", "regression"]  # a `classes` field would add multiclass without new objects
FieldKind = Literal["number", "integer", "boolean", "category", "text", "datetime"]
CalendarPart = Literal["hour", "weekday", "month"]
NAME_PATTERN = r"^[a-z][a-z0-9_]{1,62}$"
SPEC_FILE = "usecase.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(_Strict):
    """What is learned and when it becomes known (a label matures after the event)."""

    column: str = Field(description="Label column of the history / outcomes.")
    delay_hours: float = Field(default=0.0, ge=0, description="A label is known this long after the event time.")
    available_col: str | None = Field(default=None, description="Column stamping when each label became known "
                                      "(e.g. the landing time); overrides delay_hours where present.")
    rule: str = Field(default="", description="How the label is derived from raw fields, for people.")


class DataSpec(_Strict):
    """Where the use case's history comes from, and its time and entity columns."""

    time_col: str = Field(description="Event time of a row (UTC, or with an offset).")
    id_col: str | None = Field(default=None, description="Unique event id (default: row number).")
    entity_col: str | None = Field(default=None, description="Natural entity key; none = one global key.")
    path: str | None = Field(default=None, description="CSV/parquet history, relative to the use-case folder.")
    loader: str | None = Field(default=None, description="'module.py:function' in the folder returning the "
                               "history frame (for shipped data read from an installed package).")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("path", "loader") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one of path, loader (got {given})")
        if self.loader and ":" not in self.loader:
            raise ValueError(f"loader {self.loader!r}: must be 'file.py:function'")
        return self


class FeastSpec(_Strict):
    """The use case's own Feast repository and the domain functions that feed it."""

    repo: str = Field(default=".", description="Feast repository (feature_store.yaml, objects), relative to "
                      "the folder.")
    raw: str = Field(description="'file.py:function' returning the raw rows ingestion lands.")
    tables: str = Field(description="'file.py:function': landed raw rows -> {table name: frame} for the views.")
    entity_rows: str = Field(description="'file.py:function': raw rows -> entity rows of the feature service "
                             "(keys, event_timestamp = prediction time, request fields, row_id).")

    @field_validator("raw", "tables", "entity_rows")
    @classmethod
    def _callable_ref(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"{value!r}: must be 'file.py:function'")
        return value


class PipelineSpec(_Strict):
    """A use case that brings its own pipeline code (an installed package) instead of the engine's
    landing and feature-table steps: each entry is a 'package.module:function' ref."""

    history: str = Field(description="(settings, *, feature_home, start, end, progress) -> the labelled History "
                         "the backtest replays.")
    ingest: str = Field(description="(settings, sessions, *, path, until, refresh, progress) -> a JSON-ready "
                        "summary: `retrain ingest` of a batch file or of the history released up to `until`.")
    catch_up: str = Field(description="(settings, now) -> what was done: land what the clock released (replays), "
                          "rebuild the feature tables, materialize up to `now`.")
    apply: str = Field(description="(settings) -> None: `feast apply` of the use case's repository.")
    frame_provider: str = Field(description="(settings) -> FrameProvider: training and evaluation frames of a "
                                "window through the feature service.")
    demo: str | None = Field(default=None, description="(settings, policy, *, quick, until, fresh, exit_after) -> "
                             "None: `retrain demo` of this use case.")

    @field_validator("history", "ingest", "catch_up", "apply", "frame_provider", "demo")
    @classmethod
    def _module_ref(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or value.partition(":")[0].endswith(".py")):
            raise ValueError(f"{value!r}: must be 'package.module:function'")
        return value


class RequestField(_Strict):
    """One field of the serving request, with the rule it is checked against."""

    name: str
    kind: FieldKind
    required: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    description: str = ""


class FeaturesSpec(_Strict):
    """The model's feature contract: the Feast feature service and the features it yields."""

    service: str = Field(description="Feast FeatureService name: training sets and serving both read it.")
    names: list[str] = Field(min_length=1, description="Model features, in the order the model sees them.")
    categorical: list[str] = Field(default_factory=list, description="Features LightGBM treats as categories.")
    calendar: list[CalendarPart] = Field(default_factory=list, description="Calendar features derived from "
                                         "the time column at request time.")
    timezone: str = Field(default="UTC", description="Time zone of the calendar features.")

    @model_validator(mode="after")
    def _categorical_known(self) -> FeaturesSpec:
        unknown = sorted(set(self.categorical) - set(self.names))
        if unknown:
            raise ValueError(f"categorical {unknown}: not among names")
        if len(set(self.names)) != len(self.names):
            raise ValueError("names: duplicate feature names")
        return self


class UseCaseSpec(_Strict):
    """One use case, validated; `folder` is where it was read from (not part of the YAML)."""

    name: str = Field(pattern=NAME_PATTERN, description="Model name: registry, aliases, events use it.")
    description: str = ""
    default: bool = Field(default=False, description="The use case commands act on when RETRAIN_USECASE is "
                          "not set and no --usecase is given.")
    objective: Objective
    data: DataSpec
    label: LabelSpec
    prediction_offset_hours: float = Field(default=0.0, ge=0, description="A prediction is made this long "
                                           "before the event time; features use only what was known then.")
    features: FeaturesSpec
    feast: FeastSpec | None = Field(default=None, description="Its own Feast repository, fed by the engine's "
                                    "landing (none: the pipeline's own code, or no feature store).")
    pipeline: PipelineSpec | None = Field(default=None, description="Its own pipeline code (an installed "
                                          "package) for landing, feature tables, training frames and history.")
    request: list[RequestField] = Field(default_factory=list, description="Serving request fields.")
    slices: list[str] = Field(default_factory=list, description="Columns the gates check per value.")
    model_params: dict[str, Any] = Field(default_factory=dict, description="LightGBM parameters.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Overrides of retrain's Settings.")
    folder: Path | None = Field(default=None, exclude=True)

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        from retrain.core.config import Settings

        fixed = {"home", "database_url", "profile", "redis_url", "feast_registry_url", "usecase", "usecases_dir",
                 "simulated_clock", "api_key", "prefect_auth_string", "prefect_host"}
        unknown = sorted(k for k in value if k not in Settings.model_fields or k in fixed)
        if unknown:
            raise ValueError(f"{unknown}: not per-use-case settings (see `retrain usecases show NAME` for the list)")
        return value

    @model_validator(mode="after")
    def _names_consistent(self) -> UseCaseSpec:
        request = [f.name for f in self.request]
        if len(set(request)) != len(request):
            raise ValueError("request: duplicate field names")
        if self.label.column in self.features.names:
            raise ValueError(f"features.names: contains the label column {self.label.column!r} (leakage)")
        sources = [k for k, v in (("data.path", self.data.path), ("data.loader", self.data.loader),
                                  ("pipeline", self.pipeline)) if v]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of data.path, data.loader, pipeline (got {sources or 'none'})")
        if self.feast is not None and self.pipeline is not None:
            raise ValueError("give feast (the engine lands rows and builds tables) or pipeline (the use case's own "
                             "code does), not both")
        return self

    def source_file(self) -> Path | None:
        """The history file, resolved against the folder (None when the data comes from elsewhere)."""
        if self.data.path is None:
            return None
        path = Path(self.data.path).expanduser()
        return path if path.is_absolute() or self.folder is None else (self.folder / path).resolve()

    def summary(self) -> dict[str, Any]:
        """What `retrain usecases list` shows."""
        return {"name": self.name, "objective": self.objective, "label": self.label.column,
                "feature_service": self.features.service, "features": len(self.features.names),
                "folder": str(self.folder) if self.folder else None, "description": self.description}
