"""Soak: `/predict` at a fixed rate for minutes, with champion swaps; nothing lost, no leak.

    .venv/bin/python -m bench.soak [--minutes 10] [--batch 5] [--workers 2] [--fraction 0.5]
        [--home DIR] [--keep] [--out FILE]

Issue 11's proof "Soak": 10 minutes of `/predict` at about half the measured capacity, with 3
promotions and 1 rollback. Targets: 0 failed requests, RSS growth <= 10% after warm-up, and
prediction rows logged = rows answered (none lost, none duplicated).

1. A serving home of tests/support/serving_home.py (four trained versions, v1 the champion;
   bench/serve.py's `ensure_home`, reused when `--home` points at one built before) and
   `bentoml serve` of the flights service with `--workers` workers on a free 127.0.0.1 port
   (`start_server`: the workers follow the registry's champion alias every second, the
   prediction log flushes every 0.25 s, access log off).
2. Capacity: `--capacity-seconds` of closed loop with `--clients` clients (each sends its next
   request when the previous answer arrives); req/s of that.
3. Soak: an open loop at `--fraction` of that capacity for `--minutes`: request k is sent at
   t0 + k / rate whatever happened to the ones before (not back-to-back), each in its own task;
   the latency is counted from the scheduled time, so a server that falls behind shows.
   Requests rotate through windows of `--batch` real flights of 2013-02-10.
4. Swaps at 20/40/60% of the soak: three promotions (`retrain.models.registry.promote`, each to a
   version that is not the champion), at 80% one `rollback`, all on the home's database; the
   answers' `model_version` shows when the workers followed.
5. RSS of every process of the server's tree (the `bentoml serve` process and its children,
   psutil) every `--sample-seconds`; warm-up = the first `--warmup` seconds of the soak (at most
   half of it). Growth = last sample / first sample after warm-up - 1, per process and in total.
6. After the soak: wait until the `predictions` row count stops changing (bounded), reconcile,
   stop the server (graceful: the final flush), count again. Rows of this run = rows whose
   `request_id` one of this run's answers carried (capacity phase included); per request, the
   rows logged must equal the rows answered, with the answered model version, and no
   `row_key` or (request, flight) twice.

Prints a JSON summary; exit status 1 when a target is missed (0 failed requests, rows logged =
rows answered with no duplicates, RSS growth <= `--rss-limit` per process and in total).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import func, select
from tests.support.serving_home import Server, start_server

from bench.serve import bodies, ensure_home
from retrain.core.config import Settings
from retrain.core.db import Prediction, make_engine, session_factory
from retrain.models import registry

SWAPS = (("promote", 0.2), ("promote", 0.4), ("promote", 0.6), ("rollback", 0.8))


@dataclass
class Answer:
    """One request as the client saw it (times in seconds since the phase started)."""

    phase: str
    due: float  # when it was scheduled (open loop) or sent (closed loop)
    latency: float  # from `due` to the answer (or the failure)
    status: int  # HTTP status, 0 for an exception
    rows_sent: int
    rows: int = 0  # predictions in a 200 answer
    request_id: str = ""
    version: str = ""
    error: str = ""


@dataclass
class Recorder:
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, a: Answer) -> None:
        with self.lock:
            self.answers.append(a)


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any], phase: str, due: float, t0: float,
               rec: Recorder) -> None:
    sent = len(body["flights"])
    try:
        r = await client.post(url, json=body)
    except Exception as exc:  # a failed request, counted, never raised
        rec.add(Answer(phase, due - t0, time.perf_counter() - due, 0, sent, error=f"{type(exc).__name__}: {exc}"))
        return
    latency = time.perf_counter() - due
    if r.status_code != 200:
        rec.add(Answer(phase, due - t0, latency, r.status_code, sent, error=r.text[:300]))
        return
    try:
        data = r.json()
        rec.add(Answer(phase, due - t0, latency, 200, sent, rows=len(data["predictions"]),
                       request_id=str(data["request_id"]), version=str(data["model_version"])))
    except Exception as exc:
        rec.add(Answer(phase, due - t0, latency, -1, sent, error=f"bad answer: {type(exc).__name__}: {exc}"))


async def closed_loop(url: str, reqs: list[dict[str, Any]], clients: int, seconds: float, rec: Recorder,
                      phase: str) -> float:
    """Each client sends its next request when the previous one is answered; returns the seconds spent."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def worker(k: int) -> None:
            while time.perf_counter() < deadline:
                await _one(client, url, reqs[k % len(reqs)], phase, time.perf_counter(), t0, rec)
                k += clients

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return time.perf_counter() - t0


async def open_loop(url: str, reqs: list[dict[str, Any]], rate: float, seconds: float, rec: Recorder,
                    t0: float) -> int:
    """Request k at t0 + k / rate, each in its own task (the next one does not wait); returns how many."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    tasks: set[asyncio.Task[None]] = set()
    k = 0
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        while True:
            due = t0 + k / rate
            if due - t0 >= seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(client, url, reqs[k % len(reqs)], "soak", due, t0, rec))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.gather(*tasks)
    return k


# ---------------------------------------------------------------------- RSS


def tree(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def describe(p: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(p.cmdline())
        for key in ("_bentoml_impl.worker", "bentoml serve", "circus", "multiprocessing"):
            if key in cmd:
                return key
        return p.name()
    return "?"


def sample_rss(root_pid: int) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in tree(root_pid):
            with contextlib.suppress(psutil.Error):
                out[p.pid] = (describe(p), int(p.memory_info().rss))
    return out


def rss_growth(samples: list[tuple[float, dict[int, tuple[str, int]]]], warmup: float) -> dict[str, Any]:
    after = [(t, s) for t, s in samples if t >= warmup]
    if len(after) < 2:
        return {"error": f"fewer than 2 samples after warm-up ({len(after)})"}
    (t_first, first), (t_last, last) = after[0], after[-1]
    procs = []
    for pid in sorted(set(first) | set(last)):
        a, b = first.get(pid), last.get(pid)
        if a is None or b is None:
            procs.append({"pid": pid, "role": (a or b or ("?", 0))[0], "first_mb": a and a[1] / 2**20,
                          "last_mb": b and b[1] / 2**20, "growth": None,
                          "note": "started after the first sample" if a is None else "gone by the last sample"})
            continue
        procs.append({"pid": pid, "role": a[0], "first_mb": round(a[1] / 2**20, 1), "last_mb": round(b[1] / 2**20, 1),
                      "max_mb": round(max(s[pid][1] for _, s in after if pid in s) / 2**20, 1),
                      "growth": round(b[1] / a[1] - 1, 4)})
    tot_a, tot_b = sum(v for _, v in first.values()), sum(v for _, v in last.values())
    totals = [sum(v for _, v in s.values()) for _, s in samples]
    return {"first_sample_s": round(t_first, 1), "last_sample_s": round(t_last, 1), "processes": procs,
            "total_first_mb": round(tot_a / 2**20, 1), "total_last_mb": round(tot_b / 2**20, 1),
            "total_growth": round(tot_b / tot_a - 1, 4),
            "total_at_start_mb": round(totals[0] / 2**20, 1), "total_max_mb": round(max(totals) / 2**20, 1),
            "pids_changed": set(first) != set(last)}


# ---------------------------------------------------------------------- swaps


def swap(settings: Settings, sessions: Any, action: str, versions: list[str]) -> dict[str, Any]:
    name = settings.model_name
    if action == "rollback":
        before, after = registry.rollback(sessions, reason="soak benchmark rollback", actor="bench-soak",
                                          model_name=name)
        return {"action": action, "from": before.version, "to": after.version}
    champion = registry.get_alias(sessions, registry.CHAMPION, name)
    current = champion.version if champion else ""
    start = versions.index(current) + 1 if current in versions else 0
    target = next(v for v in versions[start:] + versions[:start] if v != current)
    registry.promote(sessions, target, reason="soak benchmark promotion", actor="bench-soak", model_name=name)
    return {"action": action, "from": current, "to": target}


def followed(answers: list[Answer], swaps: list[dict[str, Any]], end: float) -> None:
    """For each swap: when the first and the last answer that still carried another version came (s after)."""
    for i, s in enumerate(swaps):
        until = swaps[i + 1]["at_s"] if i + 1 < len(swaps) else end
        window = [a for a in answers if a.status == 200 and s["at_s"] <= a.due + a.latency < until]
        new = [a.due + a.latency for a in window if a.version == s["to"]]
        old = [a.due + a.latency for a in window if a.version != s["to"]]
        s["first_new_answer_after_s"] = round(min(new) - s["at_s"], 2) if new else None
        s["last_other_answer_after_s"] = round(max(old) - s["at_s"], 2) if old else 0.0
        s["answers_other_version"] = len(old)


# ---------------------------------------------------------------------- reconciliation


def logged_rows(settings: Settings, after_id: int) -> list[tuple[Any, ...]]:
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Prediction.row_key, Prediction.request_id, Prediction.entity_key,
                                            Prediction.model_version).where(Prediction.id > after_id)))
    finally:
        engine.dispose()


def count_after(settings: Settings, after_id: int) -> int:
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Prediction).where(Prediction.id > after_id))
                       .scalar_one())
    finally:
        engine.dispose()


def max_id(settings: Settings) -> int:
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(Prediction.id), 0))).scalar_one())
    finally:
        engine.dispose()


def wait_settled(settings: Settings, after_id: int, timeout: float, quiet: float = 3.0) -> tuple[int, float]:
    """Poll the count until it has not changed for `quiet` seconds (at most `timeout`); (count, seconds)."""
    t0 = time.monotonic()
    last, since = count_after(settings, after_id), time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        n = count_after(settings, after_id)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last, time.monotonic() - t0


def reconcile(answers: list[Answer], rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    ok = [a for a in answers if a.status == 200]
    answered = Counter({a.request_id: a.rows for a in ok})
    version_of = {a.request_id: a.version for a in ok}
    per_request = Counter(r[1] for r in rows)
    ours = [r for r in rows if r[1] in answered]
    dup_keys = sum(n - 1 for n in Counter(r[0] for r in ours).values() if n > 1)
    dup_pairs = sum(n - 1 for n in Counter((r[1], r[2]) for r in ours).values() if n > 1)
    short = {rid: (n, per_request.get(rid, 0)) for rid, n in answered.items() if per_request.get(rid, 0) < n}
    extra = {rid: (n, per_request[rid]) for rid, n in answered.items() if per_request.get(rid, 0) > n}
    wrong_version = sum(1 for r in ours if r[3] != version_of[r[1]])
    return {
        "requests_answered": len(ok),
        "distinct_request_ids": len(answered),
        "rows_answered": sum(a.rows for a in ok),
        "rows_logged": len(ours),
        "rows_logged_other_requests": len(rows) - len(ours),
        "requests_with_rows_missing": len(short),
        "requests_with_extra_rows": len(extra),
        "duplicate_row_keys": dup_keys,
        "duplicate_request_flight_pairs": dup_pairs,
        "rows_with_other_model_version": wrong_version,
        "examples_missing": dict(list(short.items())[:5]),
    }


def phase_stats(answers: list[Answer], seconds: float) -> dict[str, Any]:
    import numpy as np

    lat = np.array([a.latency for a in answers]) * 1000 if answers else np.zeros(1)
    failed = [a for a in answers if a.status != 200]
    return {"requests": len(answers), "seconds": round(seconds, 1), "req_per_s": round(len(answers) / seconds, 1),
            "failed": len(failed), "failures_by_status": dict(Counter(a.status for a in failed)),
            "failure_examples": [a.error for a in failed[:3]],
            "rows_answered": sum(a.rows for a in answers if a.status == 200),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
            "versions_answered": dict(Counter(a.version for a in answers if a.status == 200))}


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


# ---------------------------------------------------------------------- main


def run(args: argparse.Namespace, settings: Settings, reqs: list[dict[str, Any]]) -> dict[str, Any]:
    sessions = session_factory(make_engine(settings.db_url))
    versions = [v.version for v in registry.list_versions(sessions, settings.model_name)]
    if len(versions) < 3:
        raise SystemExit(f"need at least 3 model versions in {settings.home}, found {versions}")
    start_id = max_id(settings)
    rec = Recorder()
    summary: dict[str, Any] = {"load_start": loadavg(), "cores": os.cpu_count(), "home": str(settings.home),
                               "versions": versions, "batch": args.batch, "workers": args.workers}
    server: Server | None = None
    try:
        t_start = time.perf_counter()
        server = start_server(settings, workers=args.workers,
                              extra_env={"BENTOML_CONFIG_OPTIONS": "api_server.logging.access.enabled=false"})
        summary["server_start_s"] = round(time.perf_counter() - t_start, 1)
        url = f"{server.url}/predict"
        print(f"server up at {server.url} (pid {server.proc.pid}) in {summary['server_start_s']} s", file=sys.stderr)

        asyncio.run(closed_loop(url, reqs, args.clients, 3.0, rec, "warm"))
        spent = asyncio.run(closed_loop(url, reqs, args.clients, args.capacity_seconds, rec, "capacity"))
        cap = [a for a in rec.answers if a.phase == "capacity"]
        capacity = len(cap) / spent
        rate = max(1.0, capacity * args.fraction)
        summary["capacity"] = phase_stats(cap, spent)
        summary["rate_req_per_s"] = round(rate, 1)
        print(f"capacity {capacity:.1f} req/s ({args.clients} clients, {args.batch} flights/request); "
              f"soak at {rate:.1f} req/s for {args.minutes:g} min", file=sys.stderr)

        seconds = args.minutes * 60
        warmup = min(args.warmup, seconds / 2)
        samples: list[tuple[float, dict[int, tuple[str, int]]]] = []
        swaps: list[dict[str, Any]] = []
        swap_errors: list[str] = []
        t0 = time.perf_counter() + 0.5
        box: dict[str, Any] = {}

        def drive() -> None:
            try:
                box["sent"] = asyncio.run(open_loop(url, reqs, rate, seconds, rec, t0))
            except BaseException as exc:  # reported, and the soak counts as failed
                box["error"] = f"{type(exc).__name__}: {exc}"

        driver = threading.Thread(target=drive, name="soak-client", daemon=True)
        driver.start()
        plan = sorted([(frac * seconds, action) for action, frac in SWAPS])
        next_sample = 0.0
        while driver.is_alive():
            now = time.perf_counter() - t0
            if now >= next_sample and now < seconds + 1:
                samples.append((now, sample_rss(server.proc.pid)))
                next_sample += args.sample_seconds
            if plan and now >= plan[0][0]:
                _, action = plan.pop(0)
                try:
                    done = swap(settings, sessions, action, versions)
                    done["at_s"] = round(time.perf_counter() - t0, 2)
                    swaps.append(done)
                    print(f"{done['at_s']:7.1f} s: {action} {done['from']} -> {done['to']}", file=sys.stderr)
                except Exception as exc:
                    swap_errors.append(f"{action}: {type(exc).__name__}: {exc}")
            if server.proc.poll() is not None:
                summary["server_exited"] = server.proc.returncode
            time.sleep(0.2)
        driver.join()
        samples.append((time.perf_counter() - t0, sample_rss(server.proc.pid)))
        soak = [a for a in rec.answers if a.phase == "soak"]
        followed(soak, swaps, seconds + 60)
        summary["soak"] = phase_stats(soak, seconds)
        summary["soak"]["scheduled"] = box.get("sent")
        summary["soak"]["driver_error"] = box.get("error")
        late = sorted(a.latency for a in soak)
        summary["soak"]["answered_within_1s"] = sum(1 for x in late if x <= 1.0)
        summary["swaps"] = swaps
        summary["swap_errors"] = swap_errors
        summary["rss_samples"] = len(samples)
        summary["rss_warmup_s"] = warmup
        summary["rss"] = rss_growth(samples, warmup)

        n_settled, waited = wait_settled(settings, start_id, args.settle_timeout)
        summary["log_settled"] = {"rows_after_run": n_settled, "waited_s": round(waited, 1)}
        summary["reconcile_live"] = reconcile(rec.answers, logged_rows(settings, start_id))
    finally:
        if server is not None:
            code = server.stop()
            summary["server_exit_code"] = code
    summary["reconcile_after_stop"] = reconcile(rec.answers, logged_rows(settings, start_id))
    summary["reconcile_soak_only"] = reconcile([a for a in rec.answers if a.phase == "soak"],
                                               logged_rows(settings, start_id))
    spill = settings.home / "spill"
    summary["spill_files_left"] = len(list(spill.rglob("*.jsonl*"))) if spill.exists() else 0
    summary["load_end"] = loadavg()
    return summary


def verdict(summary: dict[str, Any], rss_limit: float) -> dict[str, bool]:
    rec = summary["reconcile_after_stop"]
    rss = summary["rss"]
    per_proc = [p["growth"] for p in rss.get("processes", [])]
    return {
        "zero_failed_requests": summary["soak"]["failed"] == 0 and not summary["soak"]["driver_error"]
        and summary["capacity"]["failed"] == 0,
        "rows_logged_equal_rows_answered": rec["rows_logged"] == rec["rows_answered"]
        and rec["requests_with_rows_missing"] == 0 and rec["requests_with_extra_rows"] == 0,
        "no_duplicates": rec["duplicate_row_keys"] == 0 and rec["duplicate_request_flight_pairs"] == 0,
        "rss_growth_within_limit": "error" not in rss and rss["total_growth"] <= rss_limit
        and all(g is not None and g <= rss_limit for g in per_proc),
        "three_promotions_one_rollback": [s["action"] for s in summary["swaps"]] == [a for a, _ in SWAPS],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the fixed-rate soak")
    parser.add_argument("--batch", type=int, default=5, help="flights per request")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients of the capacity measurement")
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--fraction", type=float, default=0.5, help="soak rate as a fraction of the capacity")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of warm-up (capped at half the soak)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling interval")
    parser.add_argument("--rss-limit", type=float, default=0.10, help="largest RSS growth after warm-up")
    parser.add_argument("--settle-timeout", type=float, default=60.0,
                        help="at most this long to wait for the prediction log to stop growing")
    parser.add_argument("--home", type=Path, default=None, help="reuse a serving home built by an earlier run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    args = parser.parse_args()

    fresh = args.home is None or not (args.home / "bentoml").exists()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        t0 = time.perf_counter()
        settings, flights = ensure_home(home)
        reqs, _ = bodies(flights, args.batch)
        print(f"home {settings.home} ready in {time.perf_counter() - t0:.0f} s; {len(flights)} flights",
              file=sys.stderr)
        summary = run(args, settings, reqs)
    finally:
        if args.home is None and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    summary["command"] = " ".join(["python -m bench.soak", *sys.argv[1:]])
    summary["home_built_by_this_run"] = fresh
    summary["targets"] = verdict(summary, args.rss_limit)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(summary["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
