"""prefect.yaml onto the Kubernetes work pool of deploy/kubernetes/, against a real Prefect server (basic
auth on, as a cluster's would be) and no cluster: the pool is created from the repo's base job template,
`prefect deploy --all` with RETRAIN_WORK_POOL=retrain-kubernetes puts every deployment on it, and a flow
run resolves, on the server's data, into the Job a Kubernetes worker would create.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration
from tests.support.serving_home import free_port

from retrain.core import services
from retrain.core.config import REPO_ROOT, Settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AUTH = "retrain:k8s-e2e-s3cr3t"
POOL = "retrain-kubernetes"
IN_IMAGE = "/opt/retrain"  # the checkout in deploy/kubernetes/flows.Dockerfile
TEMPLATE = REPO_ROOT / "deploy" / "kubernetes" / "work-pool" / "base-job-template.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(home=tmp_path_factory.mktemp("k8s-deploy"), prefect_port=free_port(), prefect_auth_string=AUTH)
    settings.ensure_dirs()
    try:
        services.start(settings, services.prefect_server_spec(settings), timeout=120)
        created = services.prefect_cli(settings, "work-pool", "create", POOL, "--type", "kubernetes",
                                       "--base-job-template", str(TEMPLATE), check=False)
        assert created.returncode == 0, created.stdout + created.stderr
        env = {**services.child_env(settings), "RETRAIN_WORK_POOL": POOL, "RETRAIN_REPO": IN_IMAGE}
        deployed = subprocess.run([services.bin_path("prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT,
                                  env=env, capture_output=True, text=True, timeout=600, check=False)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        yield settings
    finally:
        services.stop(settings, "prefect-server")


def _on_server(settings: Settings, work: Any) -> Any:
    async def run() -> Any:
        async with get_client() as client:
            return await work(client)

    api = {PREFECT_API_URL: services.prefect_api_url(settings), PREFECT_API_AUTH_STRING: AUTH}
    with temporary_settings(updates=api):
        return asyncio.run(run())


def test_every_deployment_lands_on_the_kubernetes_pool_and_runs_from_the_image_checkout(server: Settings) -> None:
    declared = {d["name"] for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
    deployments = _on_server(server, lambda c: c.read_deployments())
    assert {d.name for d in deployments} == declared
    assert {d.work_pool_name for d in deployments} == {POOL}
    for d in deployments:
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": IN_IMAGE}}]
    automations = _on_server(server, lambda c: c.read_automations())
    assert "retrain on alert" in {a.name for a in automations}  # the event trigger came along


def test_a_flow_run_resolves_into_the_job_of_the_template(server: Settings) -> None:
    async def resolve(client: Any) -> dict[str, Any]:
        train = await client.read_deployment_by_name("train/train")
        run = await client.create_flow_run_from_deployment(
            train.id, parameters={"window_from": "2013-01-01", "window_to": "2013-02-01"},
            job_variables={"memory_limit": "8Gi"})
        pool = await client.read_work_pool(POOL)
        config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="k8s-worker")
        return dict(config.job_manifest)

    job = _on_server(server, resolve)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["namespace"] == "retrain" and container["image"] == "retrain-flows:latest"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"]["limits"]["memory"] == "8Gi"  # the run's job variable over the pool default
    env = {e["name"]: e for e in container["env"]}
    assert env["RETRAIN_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "retrain-secrets"
    assert env["PREFECT_API_URL"]["value"] == services.prefect_api_url(server)


def test_the_server_refuses_job_variables_the_template_does_not_allow(server: Settings) -> None:
    async def bad_run(client: Any) -> None:
        train = await client.read_deployment_by_name("train/train")
        await client.create_flow_run_from_deployment(
            train.id, parameters={"window_from": "2013-01-01", "window_to": "2013-02-01"},
            job_variables={"backoff_limit": -1})

    with pytest.raises(PrefectHTTPStatusError) as refused:
        _on_server(server, bad_run)
    assert refused.value.response.status_code == 422 and "backoff_limit" in refused.value.response.text


def test_the_template_file_is_what_the_pool_holds(server: Settings) -> None:
    pool = _on_server(server, lambda c: c.read_work_pool(POOL))
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(Path(TEMPLATE).read_text(encoding="utf-8"))
