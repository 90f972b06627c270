"""The BentoML model store under `RETRAIN_HOME/bentoml`: save, verify, load and delete boosters.

BentoML resolves its home directory once per process (a cached provider). `use_store(settings)`
re-points it at `settings.bentoml_home` when a process works with more than one data directory
(tests, the backtest), so a model is never written into another home's store.

Loading verifies the model file's sha256 against the registry first: LightGBM aborts the whole
process on a truncated model file instead of raising (see DESIGN, BentoML pitfalls).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.core.config import Settings

if TYPE_CHECKING:
    import lightgbm as lgb

MODEL_FILENAME = "saved_model.ubj"  # bentoml.lightgbm's file name inside a model directory


class ModelStoreError(RuntimeError):
    """A model is missing from the store or its file does not match the registry."""


@dataclass(frozen=True)
class SavedModel:
    """A booster saved in the BentoML model store."""

    tag: str  # "name:version"
    version: str  # BentoML's generated version part of the tag
    path: Path  # the model file
    checksum: str  # sha256 of the model file
    size_bytes: int


def use_store(settings: Settings) -> Path:
    """Point BentoML (env and its cached container) at `settings.bentoml_home`; returns that path."""
    settings.export_env()
    home = settings.bentoml_home
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(home)
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    container: Any = BentoMLContainer
    if Path(container.bentoml_home.get()).resolve() != home.resolve():
        for sub in ("bentos", "models", "envs", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        container.bentoml_home.set(str(home))
        container.model_store_dir.set(str(home / "models"))
        container.bento_store_dir.set(str(home / "bentos"))
        container.tmp_bento_store_dir.set(str(home / "tmp"))
        container.env_store_dir.set(str(home / "envs"))
        container.model_store.set(ModelStore(str(home / "models")))
        container.bento_store.set(BentoStore(str(home / "bentos")))
        container.tmp_bento_store.set(BentoStore(str(home / "tmp")))
    return home


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_booster(
    settings: Settings,
    booster: lgb.Booster,
    *,
    metadata: dict[str, Any],
    labels: dict[str, str],
) -> SavedModel:
    """Save with `bentoml.lightgbm.save_model` under `settings.model_name`; checksum the file."""
    use_store(settings)
    import bentoml

    created = bentoml.lightgbm.save_model(settings.model_name, booster, metadata=metadata, labels=labels)
    model = bentoml.models.get(created.tag)  # the stored copy (save_model returns its temp build dir)
    path = Path(model.path_of(MODEL_FILENAME))
    return SavedModel(
        tag=str(model.tag),
        version=str(model.tag.version),
        path=path,
        checksum=file_sha256(path),
        size_bytes=path.stat().st_size,
    )


def model_file(settings: Settings, tag: str) -> Path:
    """Path of a stored model's file; ModelStoreError naming the tag when it is not in the store."""
    use_store(settings)
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as exc:
        raise ModelStoreError(f"model {tag}: not in the BentoML store at {settings.bentoml_home}") from exc
    return Path(model.path_of(MODEL_FILENAME))


def load_booster(settings: Settings, tag: str, expected_checksum: str | None = None) -> lgb.Booster:
    """Load a booster after checking its file against the recorded checksum."""
    import lightgbm as lgb

    path = model_file(settings, tag)
    if not path.is_file():
        raise ModelStoreError(f"model {tag}: file {path} is missing")
    if expected_checksum is not None:
        actual = file_sha256(path)
        if actual != expected_checksum:
            raise ModelStoreError(
                f"model {tag}: checksum mismatch (registry {expected_checksum[:12]}…, file {actual[:12]}…); "
                "refusing to load a corrupted model"
            )
    return lgb.Booster(model_file=str(path))


def delete_model(settings: Settings, tag: str) -> bool:
    """Remove a model from the store (used to undo a failed registration); False if absent."""
    use_store(settings)
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.delete(tag)
    except NotFound:
        return False
    return True


def list_tags(settings: Settings) -> list[str]:
    """Tags of every model of `settings.model_name` in the store."""
    use_store(settings)
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return sorted(str(m.tag) for m in bentoml.models.list(settings.model_name))
    except NotFound:
        return []
