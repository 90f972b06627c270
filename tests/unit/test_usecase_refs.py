"""`catalog.load_callable`: a spec's refs to its domain functions, `file.py:function` in the use-case
folder or `package.module:function` importable, and the spec bound to functions that take it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrain.usecase import generic
from retrain.usecase.catalog import UseCaseError, load_callable
from retrain.usecase.spec import UseCaseSpec


def make_spec(folder: Path | None) -> UseCaseSpec:
    return UseCaseSpec.model_validate({
        "name": "refs", "objective": "binary", "data": {"path": "h.csv", "time_col": "ts"},
        "label": {"column": "y"}, "features": {"service": "refs_v1", "names": ["x"]}, "folder": folder})


def test_a_file_ref_is_imported_from_the_folder(tmp_path: Path) -> None:
    (tmp_path / "data.py").write_text("def double(frame):\n    return frame * 2\n\n"
                                      "def named(spec, frame):\n    return spec.name, len(frame)\n")
    spec = make_spec(tmp_path)
    assert load_callable(spec, "data.py:double")(21) == 42
    assert load_callable(spec, "data.py:named")([1, 2, 3]) == ("refs", 3)  # spec bound as the first argument


def test_a_module_ref_is_imported_and_gets_the_spec(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    fn = load_callable(spec, "retrain.usecase.generic:entity_keys")
    keys = fn(pd.DataFrame({"ts": [1, 2]}))  # no entity column: the one global key
    assert keys.tolist() == [generic.GLOBAL_KEY] * 2
    assert load_callable(spec, "os.path:join")("a", "b") == "a/b"  # no `spec` parameter: nothing bound


@pytest.mark.parametrize(("ref", "message"), [
    ("missing.py:f", "data.loader: .* is not a Python file"),
    ("data.py:nope", "data.loader: .* has no function 'nope'"),
    ("retrain.no_such_module:f", "cannot import module 'retrain.no_such_module'"),
    ("retrain.usecase.generic:nope", "module 'retrain.usecase.generic' has no function 'nope'"),
    ("retrain.usecase.generic:STATS_TABLE", "has no function 'STATS_TABLE'"),
])
def test_bad_refs_name_what_is_wrong(tmp_path: Path, ref: str, message: str) -> None:
    (tmp_path / "data.py").write_text("X = 1\n")
    with pytest.raises(UseCaseError, match=message):
        load_callable(make_spec(tmp_path), ref)


def test_a_file_ref_needs_the_folder() -> None:
    with pytest.raises(UseCaseError, match="needs the use case's folder"):
        load_callable(make_spec(None), "data.py:f")
