"""Finding, reading and applying use cases: folders with a `usecase.yaml`.

Shipped use cases live in the repository's `usecases/`; a team's own ones in `RETRAIN_USECASES_DIR`
(searched first, where `retrain init` writes). `settings_for` turns global `Settings` plus a spec's
overrides into the settings of that one use case.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from retrain.core.config import REPO_ROOT, Settings
from retrain.usecase.spec import SPEC_FILE, UseCaseSpec

SHIPPED_DIR = REPO_ROOT / "usecases"


class UseCaseError(ValueError):
    """A use case is missing or its spec breaks a rule (the message names the file and field)."""


def search_dirs(settings: Settings) -> list[Path]:
    """Folders holding use cases, in lookup order (user's first)."""
    dirs = [settings.usecases_dir] if settings.usecases_dir is not None else []
    dirs.append(SHIPPED_DIR)
    seen: list[Path] = []
    for d in dirs:
        d = d.expanduser().resolve()
        if d not in seen:
            seen.append(d)
    return seen


def format_errors(exc: ValidationError) -> str:
    """pydantic errors as `field.path: message` lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def read_spec(folder: Path) -> UseCaseSpec:
    """Parse and validate `folder/usecase.yaml`."""
    path = folder / SPEC_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UseCaseError(f"{path}: no such file (a use case folder holds a {SPEC_FILE})") from exc
    except yaml.YAMLError as exc:
        raise UseCaseError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise UseCaseError(f"{path}: must be a mapping of fields (name, objective, data, label, features, ...)")
    try:
        spec = UseCaseSpec.model_validate({**raw, "folder": folder.resolve()})
    except ValidationError as exc:
        raise UseCaseError(f"{path}: {format_errors(exc)}") from exc
    if spec.name != folder.name:
        raise UseCaseError(f"{path}: name {spec.name!r} must equal the folder's name {folder.name!r}")
    return spec


def list_usecases(settings: Settings) -> list[UseCaseSpec]:
    """Every valid use case, user's first; a broken spec raises (it would be silently invisible)."""
    found: dict[str, UseCaseSpec] = {}
    for d in search_dirs(settings):
        if not d.is_dir():
            continue
        for folder in sorted(p for p in d.iterdir() if (p / SPEC_FILE).is_file()):
            spec = read_spec(folder)
            found.setdefault(spec.name, spec)
    return list(found.values())


def find_folder(settings: Settings, name: str) -> Path | None:
    """The folder of use case `name`, or None."""
    for d in search_dirs(settings):
        if (d / name / SPEC_FILE).is_file():
            return d / name
    return None


def default_name(settings: Settings) -> str:
    """The use case commands act on when none is named: the one whose spec says `default: true`
    (the first in lookup order), else the only one there is."""
    folders = [p for d in search_dirs(settings) if d.is_dir() for p in sorted(d.iterdir()) if (p / SPEC_FILE).is_file()]
    for folder in folders:
        raw = yaml.safe_load((folder / SPEC_FILE).read_text(encoding="utf-8"))
        if isinstance(raw, dict) and raw.get("default") is True:
            return folder.name
    if len(folders) == 1:
        return folders[0].name
    raise UseCaseError("no use case named and none is the default: set RETRAIN_USECASE or pass --usecase NAME "
                       f"(known: {', '.join(sorted(f.name for f in folders)) or 'none'})")


def load_usecase(settings: Settings, name: str) -> UseCaseSpec:
    """The spec of use case `name` (empty: the default one), or an error listing the known ones."""
    name = name or default_name(settings)
    folder = find_folder(settings, name)
    if folder is None:
        known = sorted({p.name for d in search_dirs(settings) if d.is_dir() for p in d.iterdir()
                        if (p / SPEC_FILE).is_file()})
        where = ", ".join(str(d) for d in search_dirs(settings))
        raise UseCaseError(f"use case {name!r}: not found in {where}; known: {', '.join(known) or 'none'} "
                           "(create one with `retrain init NAME --data FILE ...`)")
    return read_spec(folder)


def settings_for(spec: UseCaseSpec, base: Settings) -> Settings:
    """`base` with the spec's overrides, its name and feature service; validated like the environment.

    An override the environment also sets keeps the environment's value: `RETRAIN_*` variables are
    how an operator tunes a deployed use case (and how a backtest's flags reach it).
    """
    updates: dict[str, Any] = {k: v for k, v in spec.settings.items() if f"RETRAIN_{k.upper()}" not in os.environ}
    updates.update(usecase=spec.name, model_name=spec.name, feature_service=spec.features.service,
                   model_params={**base.model_params, **spec.model_params})
    if spec.feast is not None and spec.folder is not None:
        updates["feature_repo"] = (spec.folder / spec.feast.repo).resolve()
        updates["bento"] = "usecase"
    try:
        return Settings.model_validate({**base.model_dump(), **updates})
    except ValidationError as exc:
        raise UseCaseError(f"{spec.name}: settings: {format_errors(exc)}") from exc


def load_callable(spec: UseCaseSpec, ref: str) -> Callable[..., Any]:
    """The function a spec names: `file.py:function` from the use-case folder, imported by path (use
    cases are not packages), or `package.module:function` from an importable module (the engine's
    generic domain functions, `retrain.usecase.generic:entity_rows`). A ref whose part before the colon
    ends in `.py` is a file; anything else a module.

    A function whose first parameter is named `spec` gets this use case's spec bound to it, so every
    caller invokes a loaded function the same way (`fn(raw_rows)`), generic or the use case's own.
    """
    target, _, func = ref.partition(":")
    if target.endswith(".py"):
        fn = _from_file(spec, ref)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UseCaseError(f"{spec.name}: {ref!r}: cannot import module {target!r} ({exc}); a ref is "
                               "'file.py:function' in the use-case folder or 'package.module:function'") from exc
        found = getattr(module, func, None)
        if not callable(found):
            raise UseCaseError(f"{spec.name}: {ref!r}: module {target!r} has no function {func!r}")
        fn = found
    return functools.partial(fn, spec) if _takes_spec(fn) else fn


def _from_file(spec: UseCaseSpec, ref: str) -> Callable[..., Any]:
    """`file.py:function` from the use-case folder, imported by path."""
    if spec.folder is None:
        raise UseCaseError(f"{spec.name}: loader {ref!r} needs the use case's folder")
    file_name, _, func = ref.partition(":")
    path = spec.folder / file_name
    module_spec = importlib.util.spec_from_file_location(f"retrain_usecase_{spec.name}_{path.stem}", path)
    if module_spec is None or module_spec.loader is None or not path.is_file():
        raise UseCaseError(f"{spec.name}: data.loader: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UseCaseError(f"{spec.name}: data.loader: {path} has no function {func!r}")
    return fn


def _takes_spec(fn: Callable[..., Any]) -> bool:
    """True when `fn`'s first parameter is called `spec`."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].name == "spec" and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
