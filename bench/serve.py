"""Benchmark: the flight-delay service's `/predict` vs `feast serve` (features only) on the same entities.

    .venv/bin/python -m bench.serve [--duration 20] [--clients 8] [--workers 1] [--home DIR] [--out FILE]

Both servers run from the same RETRAIN_HOME (local profile: SQLite online store, DuckDB offline
store): the fixture home of tests/support/serving_home.py (Jan-Feb 2013 landed, features
materialized to 2013-02-10 11:00, a champion), built in a temporary directory unless `--home`
points at one built before (`--keep` prints its path). In the same run, alternating targets:

- ours: `POST /predict` (validation, one online-store call for the batch through the feature
  service, LightGBM, the answer; the prediction log writes every row to SQLite in the background);
- peer: `feast serve` `POST /get-online-features` with `flight_delay_v1` for the same flights
  (join keys + request data): features only, no model, no log.

Closed loop: `--clients` concurrent clients (one asyncio process), each sending its next request
as soon as the previous answer arrives, for `--duration` seconds per (target, batch size), after a
warm-up, in `--rounds` slices that alternate the targets (the machine's background load then hits
both alike). Batch sizes 1 and 100 flights. Both servers get the same worker count, access logs off;
`feast serve` runs with `--max-requests 0` (its default 1000 restarts the worker mid-run).
Reports p50, p99 and requests/s per target, and the ratios ours/peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from flight_delay import features as F
from flight_delay.serving import SERVICE_IMPORT
from retrain.core.config import REPO_ROOT, Settings
from retrain.serving.runtime import serve_argv, serve_env


@dataclass(frozen=True)
class Result:
    target: str
    batch: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout:.0f} s")


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def bodies(flights: pd.DataFrame, batch: int, n: int = 50) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`n` request bodies per target for rotating windows of `batch` flights (same flights for both)."""
    from tests.support.serving_home import flight_payload

    payloads = [flight_payload(r) for _, r in flights.iterrows()]
    ents = F.entity_frame(flights)
    ours, peer = [], []
    for k in range(n):
        idx = [(k * batch + j) % len(flights) for j in range(batch)]
        ours.append({"flights": [payloads[i] for i in idx]})
        sub = ents.iloc[idx]
        entities: dict[str, list[Any]] = {key: sub[key].tolist() for key in F.ENTITY_KEYS}
        entities["sched_dep_epoch"] = [int(x) for x in sub["sched_dep_epoch"]]
        entities["distance"] = [float(x) for x in sub["distance"]]
        peer.append({"feature_service": F.FEATURE_SERVICE, "entities": entities})
    return ours, peer


async def closed_loop(url: str, reqs: list[dict[str, Any]], clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def one(worker: int) -> None:
            nonlocal errors
            k = worker
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post(url, json=reqs[k % len(reqs)])
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1
                k += clients

        await asyncio.gather(*(one(i) for i in range(clients)))
    return latencies, errors


def measure(targets: list[tuple[str, str, list[dict[str, Any]]]], batch: int, clients: int, seconds: float,
            rounds: int, permute: bool = False) -> list[Result]:
    """Alternate the targets in `rounds` slices of `seconds / rounds` each (load drift hits both alike).

    `permute`: round r runs the targets in the r-th of their orders (itertools.permutations, cycled),
    so with rounds a multiple of n! every target runs in every position and after every other one
    equally often (a server's background work after its slice, such as the prediction-log flush,
    then does not always land on the same neighbour)."""
    lat: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    errs = dict.fromkeys(lat, 0)
    spent = dict.fromkeys(lat, 0.0)
    for _name, url, reqs in targets:
        asyncio.run(closed_loop(url, reqs, clients, 2.0))  # warm-up
    orders = list(itertools.permutations(targets)) if permute else [tuple(targets)]
    for r in range(rounds):
        for name, url, reqs in orders[r % len(orders)]:
            t0 = time.perf_counter()
            got, errors = asyncio.run(closed_loop(url, reqs, clients, seconds / rounds))
            spent[name] += time.perf_counter() - t0
            lat[name] += got
            errs[name] += errors
    out = []
    for name, _, _ in targets:
        arr = np.array(lat[name]) * 1000
        out.append(Result(name, batch, len(arr), errs[name], spent[name], float(np.percentile(arr, 50)),
                          float(np.percentile(arr, 99))))
    return out


def ensure_home(home: Path | None) -> tuple[Settings, pd.DataFrame]:
    from tests.support.serving_home import PARITY_FROM, build_serving_home, small_settings

    if home is not None and (home / "bentoml").exists():
        settings = small_settings(home)
    else:
        settings = small_settings(home or Path(tempfile.mkdtemp(prefix="bench-serve-")))
        build_serving_home(settings)
    flights = F.landed_flights(settings)
    sched = pd.to_datetime(flights["sched_dep"], utc=True)
    day = flights[(sched >= PARITY_FROM.floor("D")) & (sched < PARITY_FROM.floor("D") + pd.Timedelta(days=1))]
    return settings, day.sort_values("flight_id").reset_index(drop=True)


def report(results: list[Result], args: argparse.Namespace, settings: Settings, n_flights: int) -> str:
    lines = [
        "# Serving benchmark: `/predict` vs `feast serve`",
        "",
        f"Command: `.venv/bin/python -m bench.serve --duration {args.duration:g} --clients {args.clients} "
        f"--workers {args.workers} --rounds {args.rounds}`",
        f"Run: {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores (shared with other jobs), "
        f"{args.workers} worker(s) per server, {args.clients} closed-loop clients, "
        f"{args.duration:g} s per cell in {args.rounds} alternating slices, "
        f"{n_flights} real flights of 2013-02-10 rotated through, local profile (SQLite online store).",
        "",
        "| target | flights/request | requests | errors | p50 ms | p99 ms | requests/s | flights/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.target} | {r.batch} | {r.requests} | {r.errors} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
                     f"{r.rps:.0f} | {r.rps * r.batch:.0f} |")
    lines += ["", "| flights/request | p99 ours/peer (target <= 1) | req/s ours/peer (target >= 1) |",
              "|---:|---:|---:|"]
    for batch in sorted({r.batch for r in results}):
        ours = next(r for r in results if r.batch == batch and r.target.startswith("ours"))
        peer = next(r for r in results if r.batch == batch and r.target.startswith("peer"))
        lines.append(f"| {batch} | {ours.p99_ms / peer.p99_ms:.2f} | {ours.rps / peer.rps:.2f} |")
    lines += ["", "ours = `bentoml serve bentos.flight_delay.service:FlightDelay` (`/predict`: validation, online "
              "features, LightGBM, response, background prediction log to SQLite); peer = `feast serve` "
              "(`/get-online-features`, feature service flight_delay_v1, same entities, features only)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per (target, batch size)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="worker processes of each server")
    parser.add_argument("--batches", default="1,100")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the targets per batch size")
    parser.add_argument("--home", type=Path, default=None, help="reuse a home built by an earlier run")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args()

    settings, flights = ensure_home(args.home)
    print(f"home {settings.home}: {len(flights)} flights", file=sys.stderr)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    no_access = {"BENTOML_CONFIG_OPTIONS": "api_server.logging.access.enabled=false"}
    env = serve_env(settings, {"RETRAIN_SERVE_WORKERS": str(args.workers), **no_access})
    env.pop("RETRAIN_API_KEY", None)
    ours_port, peer_port = free_port(), free_port()
    ours = start(serve_argv("127.0.0.1", ours_port, service=SERVICE_IMPORT), env, REPO_ROOT, logs / "bench-bentoml.log")
    peer = start([str(Path(sys.executable).parent / "feast"), "serve", "-h", "127.0.0.1", "-p", str(peer_port),
                  "--workers", str(args.workers), "--no-access-log", "--max-requests", "0"],
                 serve_env(settings), settings.feature_repo, logs / "bench-feast.log")
    results: list[Result] = []
    try:
        wait_up(f"http://127.0.0.1:{ours_port}/readyz", ours)
        wait_up(f"http://127.0.0.1:{peer_port}/health", peer)
        for batch in [int(b) for b in args.batches.split(",")]:
            ours_reqs, peer_reqs = bodies(flights, batch)
            targets = [("ours /predict", f"http://127.0.0.1:{ours_port}/predict", ours_reqs),
                       ("peer feast serve", f"http://127.0.0.1:{peer_port}/get-online-features", peer_reqs)]
            for res in measure(targets, batch, args.clients, args.duration, args.rounds):
                print(f"{res.target:18s} batch {batch:4d}: {res.requests} req, {res.errors} err, "
                      f"p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, {res.rps:.0f} req/s", file=sys.stderr)
                results.append(res)
    finally:
        stop(ours)
        stop(peer)
    text = report(results, args, settings, len(flights))
    print(text)
    if args.out:
        args.out.write_text(text)
    if any(r.errors for r in results):
        print(f"errors: {statistics.fmean(r.errors for r in results):.1f} per cell; see {logs}", file=sys.stderr)


if __name__ == "__main__":
    main()
