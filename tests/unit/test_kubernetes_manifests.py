"""deploy/kubernetes/ against the Kubernetes schemas (kubernetes-validate's bundled JSON schemas, strict:
an unknown or misspelt field fails; no cluster needed), and what the schemas cannot say: the service's
probes are BentoML's /readyz and /livez on its port, the Service and the autoscaler reach the serving
pods, and every credential comes from the Secret, never from a literal value.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from retrain.core.config import REPO_ROOT, Settings

KUBE = REPO_ROOT / "deploy" / "kubernetes"
EXAMPLE_SECRET = KUBE / "secret" / "retrain-secrets.example.yaml"
NAMESPACE = "retrain"
SECRET = "retrain-secrets"
BENTO_PORT = 3000  # `bentoml serve`'s port in a bento container
# oldest Kubernetes minor we claim (autoscaling/v2, policy/v1 are GA there) and the newest schema shipped
VERSIONS = ["1.29", kubernetes_validate.utils.latest_version()]


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8")))


def resources() -> list[dict[str, Any]]:
    """Everything `kubectl apply -k deploy/kubernetes` creates from files (the generated ConfigMap aside)."""
    return [doc for name in kustomization()["resources"] for doc in load(KUBE / name)]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod this folder runs: the Deployments' and the work pool's flow-run Job."""
    pods = {f"Deployment/{d['metadata']['name']}": d["spec"]["template"]["spec"]
            for d in resources() if d["kind"] == "Deployment"}
    job = json.loads((KUBE / "work-pool" / "base-job-template.json").read_text(encoding="utf-8"))
    pods["work pool Job"] = job["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    return pods


def secret_settings() -> dict[str, set[str]]:
    """Every Settings field that holds a credential (a SecretStr) -> the env names that set it."""
    out: dict[str, set[str]] = {}
    for name, field in Settings.model_fields.items():
        if SecretStr in typing.get_args(field.annotation) or field.annotation is SecretStr:
            names = {f"RETRAIN_{name.upper()}"}
            if field.validation_alias is not None:
                names |= {a.upper() for a in getattr(field.validation_alias, "choices", []) if isinstance(a, str)}
            out[name] = names
    return out


def test_kustomization_lists_every_manifest_and_never_the_example_secret() -> None:
    k = kustomization()
    manifests = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == manifests
    assert k["namespace"] == NAMESPACE
    assert all((KUBE / f.partition("=")[2]).is_file() for g in k["configMapGenerator"] for f in g["files"])
    assert EXAMPLE_SECRET.parent != KUBE  # `apply -k` (or -f on the folder) never overwrites the real Secret


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema(version: str) -> None:
    docs = [*resources(), *load(EXAMPLE_SECRET)]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "ConfigMap",
                                         "Role", "RoleBinding", "ServiceAccount", "PersistentVolumeClaim"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == NAMESPACE


def test_the_bento_deployment_probes_bentoml_health_routes_on_its_port() -> None:
    deployment = one("Deployment", "retrain-serving")
    pod = deployment["spec"]["template"]["spec"]
    [bento] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in bento["ports"]}
    assert ports == {"http": BENTO_PORT}
    probes = {kind: bento[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez" and probes["startupProbe"]["path"] == "/livez"
    assert all(ports.get(p["port"], p["port"]) == BENTO_PORT for p in probes.values())
    # the image's entrypoint serves its own bento; an override would have to name it again
    assert "command" not in bento and "args" not in bento
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_service_and_the_autoscaler_reach_the_serving_pods() -> None:
    deployment = one("Deployment", "retrain-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()

    service = one("Service", "retrain-serving")
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    [bento] = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in bento["ports"]}
    assert container_ports[port["targetPort"]] == BENTO_PORT

    hpa = one("HorizontalPodAutoscaler", "retrain-serving")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "retrain-serving")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # utilization is measured against the request: without one the autoscaler cannot scale
    assert all("cpu" in c["resources"]["requests"] for c in deployment["spec"]["template"]["spec"]["containers"])

    budget = one("PodDisruptionBudget", "retrain-serving")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain can still move a pod


def test_every_credential_comes_from_the_secret() -> None:
    secret_names = set().union(*secret_settings().values())
    assert {"RETRAIN_DATABASE_URL", "RETRAIN_REDIS_URL", "RETRAIN_FEAST_REGISTRY_URL", "RETRAIN_API_KEY",
            "PREFECT_API_AUTH_STRING"} <= secret_names
    [example] = load(EXAMPLE_SECRET)
    keys = set(example["stringData"])
    # the example names one key for every credential setting, and holds placeholders only
    assert all(names & keys for names in secret_settings().values()), (secret_settings(), keys)
    assert all("CHANGE-ME" in value for value in example["stringData"].values())

    for where, pod in pod_specs().items():
        for c in pod["containers"]:
            for entry in c.get("env", []):
                if entry["name"] in secret_names:
                    assert "value" not in entry, f"{where}: {entry['name']} is a literal"
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref["name"] in (SECRET, "{{ secret_name }}") and ref["key"] in keys, (where, entry)
            for source in c.get("envFrom", []):
                assert "secretRef" not in source or source["secretRef"]["name"] == SECRET
    # the shared settings are no place for a credential
    config = one("ConfigMap", "retrain-config")
    assert not set(config["data"]) & secret_names
    assert not any("@" in value for value in config["data"].values())

    # each workload gets what it connects with
    connects = {"RETRAIN_DATABASE_URL", "RETRAIN_REDIS_URL", "RETRAIN_FEAST_REGISTRY_URL", "PREFECT_API_AUTH_STRING"}
    pods = pod_specs()
    serving = {e["name"] for e in pods["Deployment/retrain-serving"]["containers"][0]["env"]}
    assert connects | {"RETRAIN_API_KEY"} <= serving
    assert connects <= {e["name"] for e in pods["work pool Job"]["containers"][0]["env"]}
    worker = pods["Deployment/retrain-prefect-worker"]["containers"][0]
    assert "PREFECT_API_AUTH_STRING" in {e["name"] for e in worker["env"]}


def test_the_cluster_runs_the_production_profile_on_a_shared_data_volume() -> None:
    config = one("ConfigMap", "retrain-config")["data"]
    assert config["RETRAIN_PROFILE"] == "production" and config["PREFECT_API_URL"].endswith("/api")
    claim = one("PersistentVolumeClaim", "retrain-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # flow-run pods on any node share RETRAIN_HOME
    # the bento keeps the BentoML home of its image (its pinned model lives there)
    serving = one("Deployment", "retrain-serving")["spec"]["template"]["spec"]["containers"][0]
    assert "BENTOML_HOME" not in {e["name"] for e in serving["env"]} and "BENTOML_HOME" not in config
