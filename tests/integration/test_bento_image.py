"""What `bentoml build` makes of each bento, read without a Docker daemon: the generated Dockerfile
installs the bento's requirements.txt, and those requirements (with what they depend on) provide every
library the service imports. The service is loaded from the built bento in a clean interpreter (this
checkout hidden), with the environment the Kubernetes Deployment gives the container
(deploy/kubernetes/bento.yaml), so it runs the bento's copy of retrain the way the image will.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tests.support.flights import flight_settings

from retrain.core.config import REPO_ROOT, Settings
from retrain.models import store
from retrain.models.promotion import build_bento
from retrain.usecase.catalog import load_usecase, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTAINER_BENTO = "/home/bentoml/bento"  # BENTO_PATH in a bento image
# Libraries the bento's own modules import somewhere, that its image does not install, and why that is
# accepted: retrain.core.events.emit imports Prefect inside the function, but the service never calls it
# (the model follower's `retrain.serving.swap_failed` event is posted over HTTP by
# retrain.serving.runtime._emitter, and the alert intake posts over HTTP too). Remove an entry once fixed.
KNOWN_GAPS = {"prefect": "retrain.core.events.emit (not called by the service; its events go over HTTP)"}
MUST_INSTALL = {"bentoml", "lightgbm", "feast", "pydantic", "pydantic-settings", "sqlalchemy", "alembic",
                "pandas", "numpy", "psycopg"}


@dataclass(frozen=True)
class Built:
    bento: str  # the folder under bentos/
    usecase: str
    path: Path  # the bento in the store


def _settings(bento: str, home: Path) -> Settings:
    if bento == "flight_delay":
        return flight_settings(home=home)
    base = Settings(home=home)
    return settings_for(load_usecase(base, "bike_sharing"), base)


@pytest.fixture(scope="module", params=["flight_delay", "usecase"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """A bento built the way a promotion builds it, pinned to a small booster in a temporary store."""
    saved_env = dict(os.environ)
    settings = _settings(request.param, tmp_path_factory.mktemp(f"bento-{request.param}"))
    assert settings.bento == request.param
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4, "num_threads": 1},
                        lgb.Dataset(x, (x[:, 0] > 0).astype(int)), num_boost_round=3)
    saved = store.save_booster(settings, booster, metadata={}, labels={})
    tag = build_bento(settings, saved.tag)
    import bentoml

    path = Path(bentoml.bentos.get(tag).path)
    try:
        yield Built(request.param, settings.usecase, path)
    finally:  # use_store exported this home's variables into the test process
        os.environ.clear()
        os.environ.update(saved_env)


def requirements(built: Built) -> list[Requirement]:
    lines = (built.path / "env" / "python" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in (raw.split("#", 1)[0].strip() for raw in lines) if line]


def installed_closure(reqs: list[Requirement]) -> set[str]:
    """The distributions `pip install -r requirements.txt` brings in: the requirements and, through the
    installed metadata, everything they depend on (extras and markers honoured)."""
    extras_of: dict[str, set[str]] = {}
    todo = list(reqs)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        done = extras_of.get(name)
        if done is not None and set(req.extras) <= done:
            continue
        extras_of[name] = (done or set()) | set(req.extras)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras_of[name] | {""}):
                todo.append(sub)
    return set(extras_of)


def load_from_bento(built: Built, tmp_path: Path) -> dict[str, str | None]:
    """`bentoml.load` of the built bento in a fresh interpreter without this checkout on sys.path and
    with the serving Deployment's environment; returns module name -> file of everything it imported."""
    deployment = next(d for d in yaml.safe_load_all((REPO_ROOT / "deploy/kubernetes/bento.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    config = yaml.safe_load((REPO_ROOT / "deploy/kubernetes/config.yaml").read_text())["data"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAIN_", "BENTOML_", "PREFECT_"))}
    env.update(config)
    for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"].replace(CONTAINER_BENTO, str(built.path))
    env.update({"RETRAIN_USECASE": built.usecase, "RETRAIN_HOME": str(tmp_path),
                "BENTOML_HOME": str(built.path.parents[2]), "PYTHONPATH": ""})
    hidden = [str(REPO_ROOT), str(REPO_ROOT / "src"), str(REPO_ROOT / "usecases" / "flight_delay")]
    script = (
        "import json, os, sys\n"
        f"hidden = {{os.path.realpath(p) for p in {hidden!r}}}\n"
        "sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) not in hidden]\n"
        "import bentoml\n"
        f"bentoml.load({str(built.path)!r})\n"
        "print(json.dumps({n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def own_imports(src: Path, roots: list[Path]) -> dict[str, set[str]]:
    """Third-party top-level names imported anywhere (function bodies too) in the bento's own modules
    reachable from `roots` -> the bento files importing them."""
    search = [src, src / "usecases" / "flight_delay"]

    def own(module: str) -> Path | None:
        for base in search:
            target = base.joinpath(*module.split("."))
            for candidate in (target / "__init__.py", target.with_suffix(".py")):
                if candidate.is_file():
                    return candidate
        return None

    seen: set[Path] = set()
    todo, third = list(roots), dict[str, set[str]]()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if (path := own(name)) is not None:
                    todo.append(path)
                elif own(top) is None:
                    third.setdefault(top, set()).add(str(file.relative_to(src)))
    return third


def test_the_dockerfile_installs_the_requirements_and_copies_the_bento(built: Built) -> None:
    dockerfile = (built.path / "env" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11" in dockerfile  # the project's Python (requires-python 3.11)
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert "COPY --chown=bentoml:bentoml . ./" in dockerfile  # the bento, its src/ with retrain, into the image
    assert "ENV BENTO_PATH=$BENTO_PATH" in dockerfile and f"ARG BENTO_PATH={CONTAINER_BENTO}" in dockerfile
    assert "EXPOSE 3000" in dockerfile  # the port deploy/kubernetes/bento.yaml probes

    reqs: dict[str, Requirement] = {canonicalize_name(r.name): r for r in requirements(built)}
    assert set(reqs) >= MUST_INSTALL, MUST_INSTALL - set(reqs)
    assert str(reqs["bentoml"].specifier) == f"=={metadata.version('bentoml')}"  # the builder's BentoML
    assert {"redis", "postgres"} <= reqs["feast"].extras  # online store and registry of the production profile
    # retrain itself ships as source inside the bento (not a wheel)
    src = built.path / "src"
    assert (src / "retrain" / "__init__.py").is_file() and (src / "retrain" / "serving" / "runtime.py").is_file()
    assert (src / "bentos" / built.bento / "service.py").is_file()


def test_the_image_installs_every_library_the_service_imports(built: Built, tmp_path: Path) -> None:
    modules = load_from_bento(built, tmp_path)
    src = built.path / "src"
    # the service and retrain come from the bento, as in the image
    for name in ("retrain", f"bentos.{built.bento}.service"):
        assert modules.get(name) and Path(str(modules[name])).resolve().is_relative_to(src), (name, modules.get(name))
    assert not [n for n, f in modules.items() if f and Path(f).resolve().is_relative_to(REPO_ROOT)
                and not Path(f).resolve().is_relative_to(REPO_ROOT / ".venv")]

    # every library the bento's modules that the service loaded import anywhere (function bodies too:
    # the runtime imports Feast and LightGBM when a worker starts); the libraries' own optional imports
    # are theirs (installed ones that are merely available get imported too), their requirements count
    installed = installed_closure(requirements(built))
    roots = [Path(f) for f in modules.values() if f and Path(f).resolve().is_relative_to(src)]
    by_top = metadata.packages_distributions()
    third = own_imports(src, [Path(p).resolve() for p in roots])
    assert {"lightgbm", "feast", "bentoml", "pydantic", "sqlalchemy"} <= set(third)
    gaps = {top: sorted(files)[:3] for top, files in third.items()
            if not {canonicalize_name(d) for d in by_top.get(top, [top])} & installed}
    assert set(gaps) == set(KNOWN_GAPS), f"imported by the service's modules, not installed by the image: {gaps}"
    assert not {canonicalize_name(top) for top in KNOWN_GAPS} & installed  # a fixed gap: drop its entry


def test_built_bento_metadata_pins_the_model(built: Built) -> None:
    info: dict[str, Any] = yaml.safe_load((built.path / "bento.yaml").read_text(encoding="utf-8"))
    assert info["service"] == f"bentos.{built.bento}.service:" + info["service"].split(":")[1]
    [service] = info["services"]
    assert len(service["models"]) == 1  # pinned: the image serves exactly the promoted model
