"""The service is not exposed beyond this machine without an API key unless asked; the retrain
deployment's trigger is a named automation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retrain.core.config import REPO_ROOT, Settings
from retrain.core.services import InsecureBindError, bento_spec, check_bind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_key(host: str, tmp_path: Path) -> None:
    check_bind(Settings(home=tmp_path, serve_host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "serving.example.internal"])
def test_an_open_address_without_a_key_is_refused_with_the_fix(host: str, tmp_path: Path) -> None:
    with pytest.raises(InsecureBindError) as err:
        check_bind(Settings(home=tmp_path, serve_host=host))
    assert "RETRAIN_API_KEY" in str(err.value) and "--insecure" in str(err.value)
    with pytest.raises(InsecureBindError):
        bento_spec(Settings(home=tmp_path, serve_host=host, usecase="bike_sharing"))
    check_bind(Settings(home=tmp_path, serve_host=host, api_key="k" * 16))
    check_bind(Settings(home=tmp_path, serve_host=host, serve_insecure=True))


def test_the_retrain_trigger_is_a_named_automation() -> None:
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    retrain = next(d for d in config["deployments"] if d["name"] == "retrain")
    trigger = DeploymentEventTrigger.model_validate(retrain["triggers"][0])
    assert trigger.name == "retrain on alert" and trigger.expect == {"retrain.alert.*"}
