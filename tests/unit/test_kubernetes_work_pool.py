"""The Kubernetes work pool of the cluster profile, without a cluster: the repo's base job template
(deploy/kubernetes/work-pool/base-job-template.json) rendered for a flow run through prefect-kubernetes'
own job configuration, as the worker does before it creates the Job; and prefect.yaml's deployments
going to that pool only when RETRAIN_WORK_POOL says so.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import typing
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prefect.client.schemas.objects import Flow, FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.server.schemas.actions import validate_base_job_template
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from prefect.utilities.schema_tools import validate as validate_job_variables
from prefect_kubernetes.settings import KubernetesSettings
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from retrain.core import services
from retrain.core.config import REPO_ROOT, Settings

KUBE = REPO_ROOT / "deploy" / "kubernetes"
TEMPLATE = KUBE / "work-pool" / "base-job-template.json"
K8S_POOL = "retrain-kubernetes"
IMAGE = "registry.example.com/retrain-flows:0.1.0"
API_URL = "http://prefect-server.retrain.svc.cluster.local:4200/api"
AUTH = "ops:s3cret-basic-auth"  # the worker's own credentials: must never reach a Job manifest as a value
SECRET = "retrain-secrets"
SECRET_ENV = ("RETRAIN_DATABASE_URL", "RETRAIN_FEAST_REGISTRY_URL", "RETRAIN_REDIS_URL")


def template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text(encoding="utf-8"))


def worker_env() -> dict[str, str]:
    """The literal env of the worker Deployment (deploy/kubernetes/prefect-worker.yaml)."""
    docs = [d for d in yaml.safe_load_all((KUBE / "prefect-worker.yaml").read_text(encoding="utf-8")) if d]
    worker = next(d for d in docs if d["kind"] == "Deployment")
    env = worker["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}


class _NoClient:
    """The template has no block or variable references, so rendering must not reach a Prefect API."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rendering the job template called the Prefect API ({name})")


def render(job_variables: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], FlowRun]:
    """The Job manifest the worker would create for a run of the `train` deployment with these job
    variables: the pool's template and the variables, `prepare_for_flow_run` in a worker whose Prefect
    settings hold the API URL and its basic auth, then the worker's move of the auth string into a Secret
    reference (what `KubernetesWorker._create_job` does first, with the settings of prefect-worker.yaml)."""
    flow = Flow(id=uuid.uuid4(), name="train", labels={})
    deployment = DeploymentResponse(id=uuid.uuid4(), name="train", flow_id=flow.id, job_variables=job_variables,
                                    labels={})
    run = FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=flow.id, deployment_id=deployment.id)
    with temporary_settings(updates={PREFECT_API_URL: API_URL, PREFECT_API_AUTH_STRING: AUTH}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
            template(), job_variables, client=_NoClient()))  # type: ignore[arg-type]
        config.prepare_for_flow_run(flow_run=run, deployment=deployment, flow=flow, worker_name="worker-0")
    for name, value in worker_env().items():
        monkeypatch.setenv(name, value)
    worker = KubernetesSettings().worker
    assert worker.api_auth_string_secret_name == SECRET
    assert worker.api_auth_string_secret_key == "PREFECT_API_AUTH_STRING"
    asyncio.run(KubernetesWorker._replace_env_variable_with_secret(
        None,  # type: ignore[arg-type]  # uses no worker state
        env_variable_name="PREFECT_API_AUTH_STRING", configuration=config,
        secret_name=worker.api_auth_string_secret_name, secret_key=worker.api_auth_string_secret_key))
    return config.job_manifest, run


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container(job)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env entries: {names}"
    return {e["name"]: e for e in entries}


def validate_job(job: dict[str, Any]) -> None:
    """Strict Kubernetes schema of a batch/v1 Job. prefect-kubernetes insists on `completions` and
    `parallelism` inside the pod spec (the API server drops unknown fields); anything else must be known."""
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("completions"), pod.pop("parallelism")) == (1, 1)
    kubernetes_validate.validate(job, kubernetes_validate.utils.latest_version(), strict=True)


def test_the_template_extends_prefect_kubernetes_default_and_the_server_accepts_it() -> None:
    ours, default = template(), KubernetesWorker.get_default_base_job_template()
    # every stock variable still works (a deployment's job_variables mean the same as on a stock pool)
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    assert validate_base_job_template(ours) == ours  # what the server checks when the pool is created
    properties = ours["variables"]["properties"]
    defaults = {name: spec["default"] for name, spec in properties.items() if spec.get("default") is not None}
    validate_job_variables(defaults, ours["variables"], raise_on_error=True, ignore_required=True,
                           allow_none_with_default=False)
    assert defaults["namespace"] == "retrain" and defaults["backoff_limit"] == 0
    assert {"cpu_request", "cpu_limit", "memory_request", "memory_limit", "finished_job_ttl"} <= set(defaults)


def test_a_flow_run_renders_into_a_job_with_the_image_secrets_resources_and_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    job, run = render({"image": IMAGE}, monkeypatch)
    validate_job(job)
    assert (job["apiVersion"], job["kind"], job["metadata"]["namespace"]) == ("batch/v1", "Job", "retrain")
    c, pod = container(job), job["spec"]["template"]["spec"]
    assert c["image"] == IMAGE and c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"] == ["prefect", "flow-run", "execute"] and "command" not in c  # the image runs Prefect's engine
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert pod["restartPolicy"] == "Never"

    env = env_of(job)
    # Prefect's own: where the API is, which run this pod executes; an evicted pod's run is rescheduled
    assert env["PREFECT_API_URL"]["value"] == API_URL
    assert env["PREFECT__FLOW_RUN_ID"]["value"] == str(run.id)
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"]["value"] == "reschedule"
    # retrain's credentials only as references to the Secret, the worker's auth string too
    for name in (*SECRET_ENV, "PREFECT_API_AUTH_STRING"):
        assert "value" not in env[name], name
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": name}}, name
    assert AUTH not in json.dumps(job)
    assert c["envFrom"] == [{"configMapRef": {"name": "retrain-config"}}]
    # RETRAIN_HOME is the shared claim, mounted where the env says
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims == {"retrain-data": "retrain-data"} and mounts["retrain-data"] == env["RETRAIN_HOME"]["value"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the Job and its pod carry the flow run and deployment, so the worker's observer finds them
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["prefect.io/flow-run-id"] == str(run.id)
        assert labels["prefect.io/deployment-name"] == "train"
    assert job["metadata"]["generateName"].startswith("brave-otter")


def test_deployment_job_variables_override_resources_backoff_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {"image": IMAGE, "cpu_request": "1", "memory_limit": "8Gi", "backoff_limit": 2,
                 "env": {"RETRAIN_NUM_THREADS": "4"}}
    # what the server checks when a deployment sets job variables
    validate_job_variables(variables, template()["variables"], raise_on_error=True, ignore_required=True)
    job, _ = render(variables, monkeypatch)
    validate_job(job)
    assert container(job)["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                           "limits": {"cpu": "2", "memory": "8Gi"}}
    # Kubernetes retries the pod now, so Prefect must not end the run on SIGTERM
    assert job["spec"]["backoffLimit"] == 2
    env = env_of(job)
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"]["value"] == "relinquish"
    assert env["RETRAIN_NUM_THREADS"]["value"] == "4"
    for name in (*SECRET_ENV, "PREFECT_API_AUTH_STRING"):
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": name}}, name
    assert AUTH not in json.dumps(job)


def _deploy_configs(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[dict[str, Any]]:
    """prefect.yaml's deployments as `prefect deploy` reads them and templates `{{ $VAR }}` from the env."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.utilities.templating import apply_values
    from rich.console import Console

    monkeypatch.delenv("RETRAIN_WORK_POOL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    configs, _ = _load_deploy_configs_and_actions(prefect_file=REPO_ROOT / "prefect.yaml", console=Console())
    return [typing.cast(dict[str, Any], apply_values(c, dict(os.environ), remove_notset=False)) for c in configs]


def test_prefect_yaml_targets_the_local_pool_for_retrain_up_and_the_kubernetes_pool_on_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = _deploy_configs(monkeypatch, {"RETRAIN_WORK_POOL": services.child_env(Settings(home=tmp_path))[
        "RETRAIN_WORK_POOL"]})
    assert {c["work_pool"]["name"] for c in local} == {services.WORK_POOL}
    monkeypatch.setenv("RETRAIN_WORK_POOL", K8S_POOL)  # even when the shell says otherwise, `retrain up` stays local
    assert services.child_env(Settings(home=tmp_path))["RETRAIN_WORK_POOL"] == services.WORK_POOL

    cluster = _deploy_configs(monkeypatch, {"RETRAIN_WORK_POOL": K8S_POOL})
    assert {c["work_pool"]["name"] for c in cluster} == {K8S_POOL}
    # the same deployments, triggers and all: only the pool differs
    strip = [{k: v for k, v in c.items() if k != "work_pool"} for c in cluster]
    assert strip == [{k: v for k, v in c.items() if k != "work_pool"} for c in local]
    assert {c["name"] for c in cluster} >= {"ingest", "materialize", "train", "evaluate", "monitor", "retrain"}


def test_the_worker_deployment_polls_that_pool_with_this_template() -> None:
    docs = [d for d in yaml.safe_load_all((KUBE / "prefect-worker.yaml").read_text(encoding="utf-8")) if d]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert args[args.index("--pool") + 1] == K8S_POOL and args[args.index("--type") + 1] == "kubernetes"
    template_path = Path(args[args.index("--base-job-template") + 1])
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if template_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = next(g for g in kustomization["configMapGenerator"] if g["name"] == volume["configMap"]["name"])
    key, _, source = generated["files"][0].partition("=")
    assert key == template_path.name and (KUBE / source).resolve() == TEMPLATE.resolve()
    # its flow runs use the same uid as the worker and the image (deploy/kubernetes/flows.Dockerfile)
    dockerfile = (KUBE / "flows.Dockerfile").read_text(encoding="utf-8")
    run_as = template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert pod["securityContext"]["runAsUser"] == run_as and f"USER {run_as}" in dockerfile
    assert "WORKDIR /opt/retrain" in dockerfile and "RETRAIN_REPO=/opt/retrain" in dockerfile
