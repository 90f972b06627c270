"""Application settings: one `Settings` object read from `RETRAIN_*` environment variables.

Nothing here touches the disk at import; `get_settings()` is cached and `Settings.ensure_dirs()`
creates the data directory when a command actually needs it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]
BENTOS_DIR = REPO_ROOT / "bentos"  # one folder per service definition (setting `bento`)


class Settings(BaseSettings):
    """Every knob of retrain; env prefix `RETRAIN_` (e.g. `RETRAIN_HOME`, `RETRAIN_DATABASE_URL`)."""

    model_config = SettingsConfigDict(env_prefix="RETRAIN_", extra="ignore")

    home: Path = Field(default=Path("./var"), description="Directory holding every piece of state.")
    # URLs and keys that may carry credentials are SecretStr: repr, str and JSON dumps show "**********",
    # so a settings dump in a report, a log line or `retrain usecases show` never prints them; code that
    # connects reads them through `reveal` (or `db_url` / `redis_url_value` / `registry_url` / `api_key_value`)
    database_url: SecretStr | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home.")
    profile: Literal["local", "production"] = "local"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    feast_registry_url: SecretStr | None = None
    feature_repo: Path = REPO_ROOT / "feature_repo"

    usecase: str = Field(default="", description="Active use case (a folder with a usecase.yaml); empty: the "
                         "shipped default (the spec with `default: true`).")
    usecases_dir: Path | None = Field(default=None, description="A team's own use cases (searched before the "
                                      "shipped ones; `retrain init` writes here).")
    model_name: str = Field(default="", description="Registry name: the active use case's (set by its spec).")
    feature_service: str = Field(default="", description="Feast feature service: the active use case's.")
    num_threads: int = 2
    seed: int = 42
    delay_threshold_minutes: float = 15.0
    simulated_clock: bool = Field(default=False, description="Run on the simulated present a replay of history "
                                  "sets (RETRAIN_HOME/sim_clock.json) instead of wall-clock time. Off unless a "
                                  "demo or a replay turns it on for the processes it starts; off, the file is "
                                  "never read (`retrain status` warns when one is left behind).")

    # training
    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    validation_fraction: float = 0.15
    learning_rate: float = 0.05
    num_leaves: int = 63
    model_params: dict[str, Any] = Field(default_factory=dict, description="Further LightGBM parameters "
                                         "(a use case's model_params); seed, threads and determinism stay fixed.")
    train_dask_address: str | None = Field(
        default=None, description="dask.distributed scheduler to fit on with lightgbm.dask (e.g. "
        "tcp://host:8786); empty: single process. The saved model is a plain booster either way.")
    train_refit_full: bool = Field(default=False, description="After early stopping picked the rounds on the "
                                   "validation rows, refit that many rounds on the whole window, the latest rows "
                                   "included (better in both shipped use cases' backtests, but off until the "
                                   "monitoring reference follows the refit model: bench/RESULTS.md, 'Refit after "
                                   "early stopping'). In-process training only.")

    # evaluation gates
    eval_min_rows: int = 1000
    gate_auc_floor: float = 0.60
    gate_metric: Literal["auc", "log_loss", "brier"] = "auc"
    gate_regression_metric: Literal["rmse", "mae"] = Field(
        default="rmse", description="Regression: the loss the gates bootstrap (squared or absolute error).")
    gate_improvement_margin: float = 0.0
    gate_bootstrap_resamples: int = 1000
    gate_confidence: float = 0.95
    gate_slice_min_rows: int = 500
    gate_slice_tolerance: float = 0.02
    gate_block_hours: float = Field(default=24.0, gt=0, description="The bootstrap resamples whole blocks of this "
                                    "many hours of event time (rows of one day share its conditions), not rows.")
    gate_min_blocks: int = Field(default=5, ge=2, description="Fewer blocks than this in the evaluation window: no "
                                 "honest interval, no promotion (retrain_eval_days must cover them).")
    gate_latency_factor: float = 3.0
    gate_size_factor: float = 5.0
    decision_threshold: float = 0.5

    # serving
    bento: str = Field(default="usecase", description="The service under bentos/ that serves the use case and "
                       "that promotions build: usecase (the one definition for any use case with its own Feast "
                       "repository), or a use case's own (its spec's settings name it).")
    serve_host: str = "127.0.0.1"
    serve_port: int = 3000
    serve_max_batch: int = 1000
    serve_follow_seconds: float = 0.5
    serve_freshness_seconds: float = Field(default=60.0, gt=0, description="How often each worker checks its "
                                           "feature views' freshness (GET /model, retrain_feature_view_* metrics).")
    api_key: SecretStr | None = Field(default=None, description="Key every non-health route requires in the "
                                      "x-api-key header; empty: no key.")
    serve_insecure: bool = Field(default=False, description="Serve on a non-loopback address without an api_key "
                                 "(every route, including the alert intake that starts retrains, is then open), "
                                 "and the Prefect server without prefect_auth_string.")
    # --- serving internals (src/retrain/serving/runtime.py, follow.py, predlog.py) ----------------------
    serve_workers: int = Field(default=1, ge=1, description="BentoML worker processes; each follows the champion.")
    serve_swap_retry_seconds: float = Field(default=30.0, gt=0, description="Retry a model that failed to load.")
    serve_log_flush_seconds: float = Field(default=0.25, gt=0, description="Prediction-log flush interval.")
    serve_log_retry_seconds: float = Field(
        default=2.0, gt=0, description="After a failed database write, spill without retrying for this long."
    )
    serve_log_max_rows: int = Field(default=5000, ge=1, description="Rows per prediction-log insert.")
    serve_log_buffer_rows: int = Field(
        default=100_000, gt=0, description="Prediction-log rows held in memory awaiting a flush; rows past it "
        "are spilled to disk off the request path, or dropped and counted (retrain_predlog_rows_dropped)."
    )
    # --- end serving internals ------------------------------------------------------------------

    # prefect
    prefect_port: int = 4200
    prefect_host: str = Field(default="127.0.0.1", description="Address `retrain up` binds the Prefect server to; "
                              "a non-loopback one needs prefect_auth_string (or --insecure).")
    prefect_auth_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("prefect_auth_string", "RETRAIN_PREFECT_AUTH_STRING",
                                                    "PREFECT_API_AUTH_STRING"),
        description="Prefect's basic auth, 'user:password': the server started by `retrain up` requires it "
        "(PREFECT_SERVER_API_AUTH_STRING) and every client retrain starts sends it (PREFECT_API_AUTH_STRING).")

    # --- retraining policy (src/retrain/alerts/retraining.py) -----------------------------------------
    retrain_train_days: float = Field(default=56.0, gt=0, description="Challenger training window length.")
    retrain_eval_days: float = Field(default=14.0, gt=0, description="Fresh evaluation window length.")
    retrain_label_lag_hours: float = Field(
        default=12.0, ge=0, description="Evaluation windows end this long before now, so their labels matured."
    )
    retrain_build_bento: bool = Field(default=True, description="Build a pinned bento on promotion.")
    retrain_require_approval: bool = Field(default=False, description="A challenger that passed every gate waits "
                                           "in a paused retrain run for a person (Prefect UI, or `retrain approve|"
                                           "reject RUN`) before it is promoted.")
    retrain_approval_timeout_hours: float = Field(default=24.0, gt=0, description="No answer within this long "
                                                  "rejects the challenger.")

    # --- monitoring, alert rules and the alert ledger (src/retrain/monitoring/monitor.py, events.py) ---------
    # window and reference profile
    monitor_window_days: float = Field(default=7.0, gt=0, description="Length of a monitoring window.")
    monitor_profile_bins: int = Field(default=10, ge=2, description="Quantile bins per numeric feature.")
    monitor_profile_quantiles: int = Field(default=201, ge=11, description="Quantile sketch size (KS).")
    monitor_profile_top_k: int = Field(default=30, ge=1, description="Categories kept before __other__.")
    monitor_reference_chunks: int = Field(
        default=20, ge=3, description="Reference chunks of a window's length that thresholds are learned from: "
        "time slices of the training window (features), days resampled from the validation rows (scores).")
    monitor_reference_quantile: float = Field(
        default=0.95, gt=0.5, lt=1, description="Learned thresholds: drift must pass this quantile of the "
        "reference chunks' statistic (PSI, KS), the estimated AUC fall below the 1 - this quantile.")
    # drift rules (data_drift, prediction_drift)
    monitor_psi_threshold: float = Field(default=0.25, gt=0, description="Feature PSI that counts as drift.")
    monitor_ks_threshold: float = Field(default=0.2, gt=0, le=1, description="Feature KS that counts.")
    monitor_drift_min_features: int = Field(default=1, ge=1, description="Drifted features to fire.")
    monitor_ignore_features: list[str] = Field(
        default_factory=list,
        description="Features never drift-checked (e.g. calendar features, which shift by construction).",
    )
    monitor_prediction_psi_threshold: float = Field(default=0.2, gt=0, description="Score PSI that fires.")
    monitor_min_predictions: int = Field(default=500, ge=1, description="Predictions needed for drift.")
    monitor_drift_importance_share: float = Field(
        default=0.10, ge=0, le=1, description="Data drift needs drifted features carrying at least this share of "
        "the champion's gain importance (profiles without importance: any drifted feature counts).")
    monitor_drift_requires_performance: bool = Field(
        default=True, description="Drift alerts (data_drift, prediction_drift) fire only when performance moved "
        "too: realized decay on matured labels, or the label-free estimate where labels are too few.")
    # performance rules (performance_decay), on matured labels only
    monitor_min_labels: int = Field(default=500, ge=1, description="Matured labels needed to judge.")
    monitor_auc_drop: float = Field(default=0.03, ge=0, description="AUC below the expected AUC "
                                    "(monitor_decay_baseline) minus this fires; the estimate's margin too.")
    monitor_decay_baseline: Literal["estimate", "validation"] = Field(
        default="estimate", description="What the realized AUC must not fall monitor_auc_drop below: the AUC the "
        "window's calibrated scores lead to expect (the model did worse than its own confidence: the relation "
        "changed), or the champion's validation AUC (also fires when the window's case mix is just harder).")
    monitor_auc_floor: float = Field(default=0.60, ge=0, le=1, description="AUC below this fires.")
    monitor_ece_threshold: float | None = Field(default=0.10, description="ECE above this fires; None=off.")
    monitor_rmse_increase: float = Field(default=0.25, gt=0, description="Regression: RMSE on matured labels "
                                         "above the champion's validation RMSE x (1 + this) fires.")
    # label-free performance (estimated_decay)
    monitor_estimate_with_labels: bool = Field(
        default=False, description="Judge the AUC estimated from calibrated scores even when enough labels "
        "matured (off: the realized AUC supersedes it).")
    monitor_out_of_range_share: float = Field(
        default=0.05, gt=0, le=1, description="Extrapolation (estimated_decay, labels or not): this gain-weighted "
        "share of the window's inputs outside the training range fires (trees answer them with edge leaves).")
    # ledger: dedupe and cooldown
    monitor_dedupe_policy: Literal["champion", "champion_period", "window"] = Field(
        default="champion_period",
        description="Dedupe key of monitor alerts: one retrain per champion, per champion and period, "
        "or per monitoring window.",
    )
    monitor_dedupe_period_hours: float = Field(default=168.0, gt=0, description="Period of champion_period.")
    alert_default_dedupe_minutes: float = Field(
        default=10.0, gt=0, description="Bucket for alerts that arrive without a dedupe key."
    )
    retrain_cooldown_hours: float = Field(default=24.0, ge=0, description="No retrain this long after a promotion.")
    guardrail_hours: float = Field(default=168.0, ge=0, description="After a promotion, serving scores the previous "
                                   "champion in shadow this long, and monitoring rolls back when matured labels "
                                   "show it was better (0: off).")
    guardrail_min_labels: int | None = Field(default=None, ge=1, description="Matured rows scored by both that the "
                                             "guardrail needs (default: eval_min_rows).")
    guardrail_margin: float = Field(default=0.0, ge=0, description="Roll back when the previous champion's "
                                    "advantage has a one-sided lower bound above this (gate_confidence).")
    freshness_factor: float = Field(default=3.0, gt=1, description="A feature view is stale when its newest online "
                                    "row is older than this many times its cadence (the typical gap between its "
                                    "rows; a view's tag retrain.max_age_hours overrides the limit).")
    # --- end monitoring block ------------------------------------------------------------------

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """SQLAlchemy URL of the system of record (revealed: for connecting, never for printing)."""
        return reveal(self.database_url) or f"sqlite:///{self.home / 'retrain.db'}"

    @property
    def redis_url_value(self) -> str:
        """The Redis URL, revealed (for connecting, never for printing)."""
        return reveal(self.redis_url) or ""

    @property
    def registry_url(self) -> str:
        """SQLAlchemy URL of the Feast registry, revealed; default SQLite in home."""
        return reveal(self.feast_registry_url) or f"sqlite:///{self.home / 'feast_registry.db'}"

    @property
    def prefect_auth_value(self) -> str | None:
        """Prefect's basic-auth string, revealed; None when unset or empty."""
        return reveal(self.prefect_auth_string) or None

    @property
    def api_key_value(self) -> str | None:
        """The serving API key, revealed; None when unset or empty."""
        return reveal(self.api_key) or None

    @property
    def offline_dir(self) -> Path:
        """Parquet offline store: landed rows, outcomes and feature tables."""
        return self.home / "offline"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def feature_store_yaml(self) -> Path:
        """The Feast YAML for the active profile."""
        name = "feature_store.yaml" if self.profile == "local" else "feature_store.production.yaml"
        return self.feature_repo / name

    def ensure_dirs(self) -> None:
        """Create the data directory tree (called by commands, never at import)."""
        for path in (self.home, self.offline_dir, self.quarantine_dir, self.reports_dir, self.bentoml_home):
            path.mkdir(parents=True, exist_ok=True)

    def feast_env(self) -> dict[str, str]:
        """Environment variables the Feast YAML expands (`${RETRAIN_HOME}` and friends)."""
        env = {
            "RETRAIN_HOME": str(self.home),
            "RETRAIN_FEAST_REGISTRY_URL": self.registry_url,
            "RETRAIN_REDIS_CONNECTION": redis_connection_string(self.redis_url_value),
        }
        return env

    def export_env(self) -> None:
        """Put the variables Feast and BentoML read into this process's environment."""
        os.environ.update(self.feast_env())
        os.environ.setdefault("BENTOML_HOME", str(self.bentoml_home))
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        if auth := self.prefect_auth_value:  # Prefect's clients in this process (flows, emit_event) send it
            os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)


def reveal(value: SecretStr | str | None) -> str | None:
    """The plain value of a secret setting (a `model_copy(update=...)` may have left a plain str)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def redis_connection_string(url: str) -> str:
    """Turn `redis[s]://[:password@]host:port/db` into Feast's `host:port,db=N[,password=…][,ssl=true]`."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url if "://" in url else f"redis://{url}")
    options = [f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}", f"db={parts.path.strip('/') or 0}"]
    if parts.password:
        options.append(f"password={unquote(parts.password)}")
    if parts.scheme == "rediss":
        options.append("ssl=true")
    return ",".join(options)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings of the active use case (`RETRAIN_USECASE`): global settings plus the
    use case's overrides (cached; call `get_settings.cache_clear()` in tests)."""
    from retrain.usecase.catalog import load_usecase, settings_for

    base = Settings()
    return settings_for(load_usecase(base, base.usecase), base)


def base_settings() -> Settings:
    """Global settings with no use case applied (for a user's file outside any use case)."""
    return Settings()
