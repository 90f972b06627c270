"""Local process lifecycle: the Prefect server, a process worker and the BentoML service.

PIDs live in `RETRAIN_HOME/run/`, logs in `RETRAIN_HOME/logs/`. Each process gets its own session
(process group) so `stop` takes its children down too and nothing stale is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from retrain.core.config import BENTOS_DIR, REPO_ROOT, Settings

WORK_POOL = "retrain-local"


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one long-running process and how to tell it is healthy."""

    name: str
    argv: list[str]
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO_ROOT


class InsecureBindError(ValueError):
    """A service on a non-loopback address with no credentials and no explicit opt-in."""


def bin_path(name: str) -> str:
    """An executable of this virtual environment."""
    return str(Path(sys.executable).parent / name)


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: reachable from elsewhere
        return False


def prefect_api_url(settings: Settings) -> str:
    """The local Prefect server's API root, as clients on this host reach it."""
    host = settings.prefect_host.strip("[]")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a wildcard bind: reach it on loopback
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.prefect_port}/api"


def prefect_env(settings: Settings) -> dict[str, str]:
    """Prefect state under RETRAIN_HOME, analytics off, API pointed at the local server; with
    `prefect_auth_string`, the server requires Prefect's basic auth and every client sends it."""
    env = {
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_API_URL": prefect_api_url(settings),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": settings.prefect_host,
        "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # an alert waits at most a second for the worker
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",  # the demo reads deployment results back
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    if auth := settings.prefect_auth_value:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


def use_local_prefect(settings: Settings) -> None:
    """Point this process's Prefect client at the server `retrain up` runs (unless PREFECT_API_URL says
    otherwise), with the settings' basic auth."""
    os.environ.setdefault("PREFECT_API_URL", prefect_api_url(settings))
    if auth := settings.prefect_auth_value:
        os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)


def child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every child process gets: settings, Feast, BentoML and Prefect variables."""
    env = dict(os.environ)
    env.update(settings.feast_env())
    env.update(prefect_env(settings))
    env["RETRAIN_HOME"] = str(settings.home)
    env["RETRAIN_REPO"] = str(REPO_ROOT)
    env["RETRAIN_WORK_POOL"] = WORK_POOL  # prefect.yaml's deployments go to this process pool, never another
    env["BENTOML_HOME"] = str(settings.bentoml_home)
    env["BENTOML_DO_NOT_TRACK"] = "True"
    # simulated time reaches the worker's flow runs and the service exactly when this process's settings
    # run on it (the demo turns it on), whatever the inherited environment holds
    env["RETRAIN_SIMULATED_CLOCK"] = "1" if settings.simulated_clock else "0"
    # LightGBM's OpenMP threads spin-wait by default: on a shared 2-core machine a fit took 15.7 s
    # with 2 spinning threads vs 4.8 s with PASSIVE waiting (bench/loop.py).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Feast decorates its classes with typeguard's @typechecked, which re-parses and recompiles
    # their source on every import (~5 s of a flow run's or the service's start-up); -O turns it
    # off. Definitions were type-checked when `feast apply` registered them.
    env.setdefault("PYTHONOPTIMIZE", "1")
    env.update(extra or {})
    return env


def prefect_server_spec(settings: Settings) -> ServiceSpec:
    """`prefect server start` on `prefect_host`; refuses a non-loopback address without basic auth
    (`prefect_auth_string`) unless `serve_insecure`."""
    if not _is_loopback(settings.prefect_host) and not settings.prefect_auth_value and not settings.serve_insecure:
        raise InsecureBindError(
            f"prefect_host {settings.prefect_host!r} is reachable from other hosts and no prefect_auth_string is "
            "set: anyone could read runs and start deployments; set RETRAIN_PREFECT_AUTH_STRING=user:password, "
            "bind 127.0.0.1, or pass --insecure (RETRAIN_SERVE_INSECURE=1) to run it open on purpose")
    return ServiceSpec(
        name="prefect-server",
        argv=[bin_path("prefect"), "server", "start", "--host", settings.prefect_host,
              "--port", str(settings.prefect_port), "--analytics-off"],
        health_url=f"{prefect_api_url(settings)}/health",
    )


def prefect_worker_spec(settings: Settings) -> ServiceSpec:
    return ServiceSpec(name="prefect-worker",
                       argv=[bin_path("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"])


def bento_service(settings: Settings) -> str:
    """The service import path of the use case's bento (`service:` in bentos/<bento>/bentofile.yaml)."""
    import yaml

    bentofile = BENTOS_DIR / settings.bento / "bentofile.yaml"
    try:
        service = yaml.safe_load(bentofile.read_text(encoding="utf-8")).get("service")
    except (OSError, AttributeError, yaml.YAMLError) as exc:
        raise RuntimeError(f"bento {settings.bento!r}: cannot read {bentofile} (setting `bento`): {exc}") from exc
    if not isinstance(service, str) or ":" not in service:
        raise RuntimeError(f"{bentofile}: `service` must be 'module:Class'")
    return service


def check_bind(settings: Settings) -> None:
    """Refuse to expose the service beyond this machine without an API key, unless asked to explicitly."""
    if not _is_loopback(settings.serve_host) and not settings.api_key_value and not settings.serve_insecure:
        raise InsecureBindError(
            f"serve_host {settings.serve_host!r} is reachable from other hosts and no api_key is set: every route, "
            "including the one that starts retrains, would be open; set RETRAIN_API_KEY, serve on 127.0.0.1, or "
            "pass --insecure (RETRAIN_SERVE_INSECURE=1) to serve it open on purpose")


def bento_spec(settings: Settings) -> ServiceSpec:
    """`bentoml serve` of the active use case's bento: the one use-case service definition
    (`settings.bento == "usecase"`, with `--arg usecase=NAME`) or the use case's own. Refuses a
    non-loopback address without an API key (`check_bind`)."""
    check_bind(settings)
    argv = [bin_path("bentoml"), "serve", bento_service(settings)]
    if settings.bento == "usecase":
        argv += ["--arg", f"usecase={settings.usecase}"]
    env = {"RETRAIN_USECASE": settings.usecase}  # the workers' settings are the served use case's
    return ServiceSpec(
        name="bentoml",
        argv=[*argv, "--host", settings.serve_host, "--port", str(settings.serve_port)],
        health_url=f"http://{settings.serve_host}:{settings.serve_port}/readyz",
        env=env,
    )


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def pid_of(settings: Settings, name: str) -> int | None:
    """PID of a running service we started, or None (stale PID files are removed)."""
    path = _pid_file(settings, name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None
    return pid


def start(settings: Settings, spec: ServiceSpec, timeout: float = 90.0) -> int:
    """Start a service unless it already runs; wait until its health URL answers."""
    running = pid_of(settings, spec.name)
    if running:
        return running
    (settings.home / "run").mkdir(parents=True, exist_ok=True)
    (settings.home / "logs").mkdir(parents=True, exist_ok=True)
    log = open(settings.home / "logs" / f"{spec.name}.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(spec.argv, cwd=spec.cwd, env=child_env(settings, spec.env), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(settings, spec.name).write_text(str(proc.pid))
    if spec.health_url:
        try:
            wait_healthy(spec.health_url, timeout, proc)
        except Exception:
            stop(settings, spec.name)
            raise
    return proc.pid


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 2xx; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}; see its log under RETRAIN_HOME/logs")
        try:
            if httpx.get(url, timeout=2.0).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


def stop(settings: Settings, name: str, grace: float = 15.0) -> bool:
    """Stop a service and its process group: SIGTERM, then SIGKILL after `grace` seconds."""
    pid = pid_of(settings, name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            os.waitpid(pid, os.WNOHANG)
        except (ProcessLookupError, ChildProcessError):
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _pid_file(settings, name).unlink(missing_ok=True)
    return True


def running(settings: Settings) -> dict[str, int | None]:
    """Which of our services run, by name."""
    return {name: pid_of(settings, name) for name in ("prefect-server", "prefect-worker", "bentoml")}


def prefect_cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `prefect` CLI against the local server."""
    return subprocess.run([bin_path("prefect"), "--no-prompt", *args], cwd=REPO_ROOT, env=child_env(settings),
                          capture_output=True, text=True, check=check)


def ensure_pool_and_deploy(settings: Settings) -> None:
    """Create the process work pool (deploy fails without it), then deploy everything in prefect.yaml."""
    inspect = prefect_cli(settings, "work-pool", "inspect", WORK_POOL, check=False)
    if inspect.returncode != 0:
        prefect_cli(settings, "work-pool", "create", WORK_POOL, "--type", "process")
    result = prefect_cli(settings, "deploy", "--all", check=False)
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
