"""`retrain init`: a complete use-case folder from a user's CSV or parquet file.

It infers the raw-batch contract from the data (kinds, ranges with a margin, categories, null
rates), picks the calendar parts that carry signal for the label, sizes the minimum-row settings to
the data's volume, and writes `usecase.yaml`, `contract.yaml` and a README into a staging folder that
is renamed into place only once the spec reads back valid: a refused file leaves nothing behind.

The use case gets its own Feast repository (`retrain.usecase.feast_repo`): the spec's `feast:` section
names the engine's generic domain functions (`retrain.usecase.generic`), whose `label_stats` view adds
how the label behaved recently per entity to the features.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from retrain.core.config import Settings
from retrain.usecase.calendar import feature_name, useful_parts
from retrain.usecase.catalog import SHIPPED_DIR, find_folder, read_spec
from retrain.usecase.contract import DataContract, InputFileError, infer_contract, read_user_file
from retrain.usecase.feast_repo import write_repo
from retrain.usecase.generic import cadence_for, layout, stats_features, windows_for
from retrain.usecase.sizing import MAX_WINDOW_DAYS, MIN_EVAL_ROWS, Volume, sized_settings
from retrain.usecase.spec import NAME_PATTERN, SPEC_FILE, UseCaseSpec

CONTRACT_FILE = "contract.yaml"
GENERIC = "retrain.usecase.generic"  # the module of the generic domain functions the feast section names
MAX_ENTITY_CATEGORIES = 50


@dataclass(frozen=True)
class InitResult:
    """What `retrain init` wrote and decided."""

    spec: UseCaseSpec
    contract: DataContract
    folder: Path
    calendar: dict[str, float]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "folder": str(self.folder), "objective": self.spec.objective,
                "features": list(self.spec.features.names), "calendar_explained": self.calendar,
                "rows": self.contract.rows, "rows_per_day": round(self.contract.rows_per_day, 3),
                "settings": self.settings, "notes": self.notes}


def target_dir(settings: Settings) -> Path:
    """Where new use cases go: RETRAIN_USECASES_DIR, else the shipped folder of this checkout."""
    return (settings.usecases_dir or SHIPPED_DIR).expanduser().resolve()


def _check_name(name: str, settings: Settings) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InputFileError(f"NAME {name!r}: must be 2-63 characters of a-z, 0-9 and _, starting with a letter")
    existing = find_folder(settings, name)
    if existing is not None:
        raise InputFileError(f"NAME {name!r}: a use case of that name already exists at {existing}; choose another "
                             "name or remove that folder")


def _request_fields(contract: DataContract) -> list[dict[str, Any]]:
    """Serving request fields: the entity, the event time, and every feature column with its rule."""
    out: list[dict[str, Any]] = []
    for col in contract.columns:
        if col.role == "label":
            continue
        kind = "datetime" if col.role == "time" else ("text" if col.role == "entity" else col.kind)
        item: dict[str, Any] = {"name": col.name, "kind": kind, "required": not col.nullable}
        if col.role == "feature":
            if col.min is not None:
                item["min"] = col.min
            if col.max is not None:
                item["max"] = col.max
            if col.categories:
                item["categories"] = list(col.categories)
        out.append(item)
    return out


def build_spec(name: str, contract: DataContract, *, data_path: Path, calendar: list[str],
               label_delay_hours: float, sized: dict[str, Any], entity_values: int | None = None) -> dict[str, Any]:
    """The `usecase.yaml` mapping for an inferred contract.

    An entity with few distinct values (stores, regions: at most MAX_ENTITY_CATEGORIES) is also a
    categorical feature and the first slice; a high-cardinality one (customers) is only a key.
    """
    feats = [c for c in contract.columns if c.role == "feature"]
    names = [c.name for c in feats] + [feature_name(contract.time_col, p) for p in calendar]
    stats = stats_features(windows_for(cadence_for(contract)))
    clash = sorted(set(stats) & set(contract.names))
    if clash:
        raise InputFileError(f"column(s) {', '.join(map(repr, clash))}: the name of a generated label-stats feature; "
                             "rename the column(s)")
    names += stats
    categorical = [c.name for c in feats if c.kind == "category"]
    slices = [c.name for c in feats if c.kind == "category" and c.categories and len(c.categories) <= 20][:2]
    if contract.entity_col and entity_values is not None and entity_values <= MAX_ENTITY_CATEGORIES:
        names.insert(0, contract.entity_col)
        categorical.insert(0, contract.entity_col)
        slices = [contract.entity_col, *slices][:2]
    return {
        "name": name,
        "description": f"Scaffolded by `retrain init` from {data_path.name}.",
        "objective": contract.objective,
        "data": {"path": str(data_path), "time_col": contract.time_col, "entity_col": contract.entity_col},
        "label": {"column": contract.label_col, "delay_hours": float(label_delay_hours)},
        "feast": {"repo": ".", "raw": f"{GENERIC}:raw", "tables": f"{GENERIC}:tables",
                  "entity_rows": f"{GENERIC}:entity_rows"},
        "features": {"service": f"{name}_v1", "names": names, "categorical": categorical,
                     "calendar": list(calendar), "timezone": "UTC"},
        "request": _request_fields(contract),
        "slices": slices,
        "settings": sized,
    }


def init_usecase(name: str, data: Path, *, settings: Settings, time_col: str, label_col: str,
                 entity_col: str | None = None, regression: bool = False, label_delay_hours: float = 0.0,
                 into: Path | None = None) -> InitResult:
    """Infer, size and write a new use case; raise `InputFileError` (nothing written) on a bad file."""
    _check_name(name, settings)
    if label_delay_hours < 0:
        raise InputFileError(f"--label-delay-hours {label_delay_hours}: must be >= 0")
    data = data.expanduser().resolve()
    frame = read_user_file(data)
    contract = infer_contract(frame, time_col=time_col, label_col=label_col, entity_col=entity_col,
                              regression=regression)
    notes = list(contract.notes)
    y = frame[label_col] if regression else _binary(frame[label_col])
    calendar = useful_parts(frame[time_col], pd.to_numeric(y, errors="coerce"), "UTC")
    labelled = int(pd.to_numeric(y, errors="coerce").notna().sum())
    volume = Volume(rows=labelled, days=(contract.end - contract.start).total_seconds() / 86_400,
                    label_delay_hours=label_delay_hours, times_per_day=contract.times_per_day)
    if volume.expected(MAX_WINDOW_DAYS) < MIN_EVAL_ROWS:
        raise InputFileError(f"{data.name}: {labelled} labelled rows over {volume.days:.0f} days: even a one-year "
                             f"evaluation window would hold fewer than {MIN_EVAL_ROWS} rows; retraining needs more "
                             "history")
    sized = sized_settings(volume, settings)
    entity_values = int(frame[entity_col].nunique()) if entity_col else None
    spec_map = build_spec(name, contract, data_path=data, calendar=list(calendar),
                          label_delay_hours=label_delay_hours, sized=sized, entity_values=entity_values)
    parent = (into or target_dir(settings)).expanduser().resolve()
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    if final.exists():
        raise InputFileError(f"NAME {name!r}: {final} already exists; choose another name or remove it")
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))
    staging = scratch / name  # read_spec checks that the folder is named like the use case
    try:
        staging.mkdir()
        _write(staging, spec_map, contract, calendar, notes)
        staged = read_spec(staging)
        try:
            layout(staged, contract)
        except ValueError as exc:
            raise InputFileError(f"{data.name}: {exc}") from exc
        write_repo(staging, staged, contract)
        read_spec(staging)  # validate before publishing
        staging.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return InitResult(spec=read_spec(final), contract=contract, folder=final, calendar=calendar,
                      settings=sized, notes=notes)


def _binary(raw: pd.Series) -> pd.Series:
    from retrain.usecase.frames import binary_label

    return binary_label(raw, str(raw.name))


def _write(folder: Path, spec_map: dict[str, Any], contract: DataContract, calendar: dict[str, float],
           notes: list[str]) -> None:
    header = (f"# Use case {spec_map['name']}, scaffolded by `retrain init`. Edit freely; "
              "`retrain usecases show NAME` checks it.\n")
    (folder / SPEC_FILE).write_text(header + yaml.safe_dump(spec_map, sort_keys=False), encoding="utf-8")
    (folder / CONTRACT_FILE).write_text(
        "# Raw-batch contract inferred from the data (ranges widened by a margin); batches are checked "
        "against it.\n" + yaml.safe_dump(contract.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    cal = ", ".join(f"{k} (epsilon² {v})" for k, v in calendar.items()) or "none carried signal"
    lines = [f"# {spec_map['name']}", "", spec_map["description"], "",
             f"- objective: {spec_map['objective']}, label `{contract.label_col}`, time `{contract.time_col}`, "
             f"entity `{contract.entity_col or '(one global key)'}`",
             f"- {contract.rows:,} rows, {contract.rows_per_day:.2f} per day",
             f"- calendar features from the time column: {cal}",
             f"- settings sized to the data: {spec_map['settings'] or 'defaults fit'}",
             f"- its own Feast repository (project `{spec_map['name']}`): `feature_store.yaml`, "
             "`feature_store.production.yaml` and `features.py` (entity, label-stats view, request view, feature "
             f"service `{spec_map['features']['service']}`), fed by `retrain.usecase.generic`",
             *[f"- note: {n}" for n in notes], ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
