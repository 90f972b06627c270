"""One BentoML service for any use case with its own Feast repository: a thin shell over
`retrain.usecase.serving.UseCaseRuntime`. The flights keep `bentos/flight_delay`.

The use case is a bento argument (default `RETRAIN_USECASE`); its spec is read when this module is
imported, because the `/predict` body and answer models (and so `/docs.json`) are built from it:

    bentoml serve bentos.usecase.service:UseCaseService --arg usecase=bike_sharing
    bentoml build -f bentos/usecase/bentofile.yaml --arg usecase=bike_sharing .
    bentoml build -f bentos/usecase/bentofile.yaml --arg usecase=bike_sharing \
        --arg model_tag=bike_sharing:<version> .          # pinned to one model

Run from the repo root with `RETRAIN_HOME`, `BENTOML_HOME=$RETRAIN_HOME/bentoml` and
`BENTOML_DO_NOT_TRACK=True` set (`retrain.serving.runtime.serve_env`). Without `model_tag` every worker follows
the registry's `champion` alias of the use case.

Endpoints: `POST /predict` (`{"rows": [...]}` with the spec's request fields; a rule broken answers 400
with `detail` items whose `loc` names the row and field), `GET /model`, `/livez` `/readyz` `/healthz`,
`/metrics`, docs at `/` and `/docs.json`, which documents every status a route answers; every error answer
is `{"error": ..., "detail": [...]}` (`retrain.serving.models.ErrorBody`). With `RETRAIN_API_KEY` set, all
but the health probes need the key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI
from pydantic import BaseModel, Field

from retrain.core.config import Settings, base_settings
from retrain.serving.httpapi import error_response, expose
from retrain.serving.models import ModelInfo
from retrain.serving.runtime import NotReadyError, PinnedModel
from retrain.usecase.catalog import SHIPPED_DIR
from retrain.usecase.request import request_models
from retrain.usecase.serving import UseCaseRuntime, served_usecase


class BuildArgs(BaseModel):
    usecase: str = Field(default_factory=lambda: base_settings().usecase)  # `--arg usecase=NAME`, or RETRAIN_USECASE
    model_tag: str | None = None  # pin the served model (`--arg model_tag=NAME:VERSION`)
    follow: bool | None = None  # follow the registry's champion; default: only when not pinned


def _base() -> Settings:
    """Global settings; inside a built bento the use cases sit next to this file's package (`src/usecases`,
    not where `retrain.core.config.REPO_ROOT` points), so they are searched there unless a dir is configured."""
    base = base_settings()
    bundled = Path(__file__).resolve().parents[2] / "usecases"
    if base.usecases_dir is None and bundled.is_dir() and bundled != SHIPPED_DIR.resolve():
        base = base.model_copy(update={"usecases_dir": bundled})
    return base


args = bentoml.use_arguments(BuildArgs)
SPEC, _IMPORT_SETTINGS = served_usecase(args.usecase, _base())
# The body models come from the spec: BentoML takes the API's input/output specs from them, so the
# OpenAPI document (`/docs.json`) shows this use case's fields, ranges and categories.
MODELS = request_models(SPEC, max_batch=_IMPORT_SETTINGS.serve_max_batch)
extra_routes = FastAPI(title=f"{SPEC.name} extras", docs_url=None, redoc_url=None, openapi_url=None)


def current_settings() -> Settings:
    """The served use case's settings, read when a worker starts (environment of that moment)."""
    return served_usecase(SPEC.name, _base())[1]


@bentoml.asgi_app(extra_routes, path="/")
@bentoml.service(name=SPEC.name, description=SPEC.description or None,
                 workers=_IMPORT_SETTINGS.serve_workers, traffic={"timeout": 30})
class UseCaseService:
    """Scores a use case's rows from its online features with the registry's champion."""

    pinned_model = bentoml.models.BentoModel(args.model_tag) if args.model_tag else None

    def __init__(self) -> None:
        from retrain.models.store import MODEL_FILENAME

        logging.getLogger("retrain").setLevel(logging.INFO)  # swaps, spills, replays reach the server log
        pinned = None
        stored = self.pinned_model
        if stored is not None:
            pinned = PinnedModel(tag=str(stored.tag), path=Path(stored.path_of(MODEL_FILENAME)))
        follow = args.follow if args.follow is not None else pinned is None
        self.runtime = UseCaseRuntime(SPEC, current_settings(), pinned=pinned, follow=follow)

    @bentoml.on_startup
    async def start(self) -> None:
        await self.runtime.start()

    @bentoml.on_shutdown
    async def stop(self) -> None:
        await self.runtime.stop()

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.api(route="/predict", input_spec=MODELS.request, output_spec=MODELS.response)
    async def predict(self, rows: list[Any]) -> Any:
        """Score rows: the use case's entity rows, its feature service online, the champion, a logged answer."""
        try:
            return await self.runtime.predict_rows(rows)
        except NotReadyError as exc:
            return error_response(503, str(exc))

    @extra_routes.get("/model", response_model=ModelInfo)
    def model(self) -> ModelInfo:
        """The champion (and shadow challenger) this worker serves, and the registry's view."""
        return self.runtime.model_info()


expose(UseCaseService, extra_routes, settings_provider=current_settings, unavailable={
    "/predict": "No champion model loaded yet, or the online feature store is not open (see `/readyz`)."})
