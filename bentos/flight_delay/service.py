"""The flight-delay BentoML service: a thin shell over `flight_delay.serving.FlightsRuntime`.

Run from the repo root (offline):  `bentoml serve bentos.flight_delay.service:FlightDelay`
with `RETRAIN_HOME`, `BENTOML_HOME=$RETRAIN_HOME/bentoml` and `BENTOML_DO_NOT_TRACK=True` set
(`retrain.serving.runtime.serve_env` builds that environment). Without arguments every worker follows the
registry's `champion` alias. A bento built at promotion is pinned to its model:
`bentoml build -f bentos/flight_delay/bentofile.yaml --arg model_tag=flight_delay:<version> .`
serves that model (add `--arg follow=true` to still follow the registry from it).

Endpoints: `POST /predict`, `GET /model`, `POST /alerts/alertmanager`, `/livez` `/readyz` `/healthz`,
`/metrics`, docs at `/` and `/docs.json`, which documents every status a route answers; every error
answer is `{"error": ..., "detail": [...]}` (`retrain.serving.models.ErrorBody`). With `RETRAIN_API_KEY`
set, all but the health probes need the key. A `/predict` answer names the worker that scored it in the
`x-retrain-worker` header (its pid, as `worker_pid` in `GET /model`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

try:  # the use case's own package: installed with the project, or in a bento beside this folder
    import flight_delay  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "usecases" / "flight_delay"))

import bentoml
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from starlette.responses import Response

from flight_delay.serving import FlightsRuntime
from flight_delay.serving_schema import FlightIn, PredictRequest, PredictResponse
from retrain.alerts.intake import AlertmanagerWebhook, IntakeAnswer, IntakeUnavailable, alertmanager_intake
from retrain.core.config import get_settings
from retrain.serving.httpapi import error_response, expose
from retrain.serving.models import ModelInfo
from retrain.serving.runtime import NotReadyError, PinnedModel


class BuildArgs(BaseModel):
    model_tag: str | None = None  # pin the served model (set by `bentoml build --arg model_tag=...`)
    follow: bool | None = None  # follow the registry's champion; default: only when not pinned


args = bentoml.use_arguments(BuildArgs)
WORKER_HEADER = "x-retrain-worker"  # the pid of the worker that answered a `/predict`
extra_routes = FastAPI(title="flight_delay extras", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.asgi_app(extra_routes, path="/")
@bentoml.service(name="flight_delay", workers=get_settings().serve_workers, traffic={"timeout": 30})
class FlightDelay:
    """Probability that a flight arrives more than 15 minutes late, from online features."""

    pinned_model = bentoml.models.BentoModel(args.model_tag) if args.model_tag else None

    def __init__(self) -> None:
        from retrain.models.store import MODEL_FILENAME

        logging.getLogger("retrain").setLevel(logging.INFO)  # swaps, spills, replays reach the server log

        pinned = None
        stored = self.pinned_model  # resolved from the (bento's) model store
        if stored is not None:
            pinned = PinnedModel(tag=str(stored.tag), path=Path(stored.path_of(MODEL_FILENAME)))
        follow = args.follow if args.follow is not None else pinned is None
        self.runtime = FlightsRuntime(get_settings(), pinned=pinned, follow=follow)

    @bentoml.on_startup
    async def start(self) -> None:
        await self.runtime.start()

    @bentoml.on_shutdown
    async def stop(self) -> None:
        await self.runtime.stop()

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    @bentoml.api(route="/predict", input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, flights: list[FlightIn], ctx: bentoml.Context) -> PredictResponse | Response:
        """Score flights: online features through flight_delay_v1, the champion model, a logged answer."""
        ctx.response.headers[WORKER_HEADER] = str(os.getpid())
        try:
            return await self.runtime.predict(flights)
        except NotReadyError as exc:
            ctx.response.status_code = 503  # BentoML answers a returned Response with the context's status
            return error_response(503, str(exc))

    @extra_routes.post("/alerts/alertmanager", response_model=IntakeAnswer)
    def alertmanager(self, body: AlertmanagerWebhook) -> dict[str, Any]:
        """Prometheus Alertmanager webhook: firing alerts become `retrain.alert.*` Prefect events."""
        try:
            return alertmanager_intake(self.runtime.settings, self.runtime.sessions, body.as_body())
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except IntakeUnavailable as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc

    @extra_routes.get("/model", response_model=ModelInfo)
    def model(self) -> ModelInfo:
        """The champion (and shadow challenger) this worker serves, and the registry's view."""
        return self.runtime.model_info()


expose(FlightDelay, extra_routes, unavailable={
    "/predict": "No champion model loaded yet, or the online feature store is not open (see `/readyz`).",
    "/alerts/alertmanager": "No Prefect API (PREFECT_API_URL) or database to forward the alerts to, or Prefect "
                            "did not take them.",
})
FlightDelayService = FlightDelay  # the name retrain.core.services.bento_spec starts
