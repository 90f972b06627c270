"""Benchmark: `/predict` at HEAD vs the last landed commit, and the generic use-case service vs the flights one.

    .venv/bin/python -m bench.serve_generic [--duration 15] [--clients 8] [--workers 1] [--rounds 6]
        [--old-commit 540d9bd] [--work DIR] [--keep] [--out FILE]

Issue "Any tabular model": `/predict` through the generic path vs the flights path at the last landed
commit, same run: p99 ratio <= 1.05 and req/s ratio >= 0.95, at 1 and 100 rows per request.

Three servers, one worker each, access logs off, alternated in `--rounds` slices per batch size
(bench/serve.py's closed-loop client, `measure` and server start/stop are reused, not copied). Each
round runs the three in another of their 6 orders: with one fixed order, whichever of HEAD/OLD ran
first came out 7-10% ahead at 1 row (see bench/RESULTS.md; plausibly a server's background work
after its slice, such as the prediction-log flush, overlapping the next target's slice). `--fixed`
and `--old-first` reproduce those fixed orders:

- `flights HEAD`: `bentoml serve bentos.flight_delay.service:FlightDelay` from this tree, over a home
  built by this tree's tests/support/serving_home.py (SQL schema at HEAD's migration);
- `flights OLD`: the same service from a `git worktree` of `--old-commit` (default 540d9bd, the last
  commit before the generic use-case work) under a temporary directory, run by the same venv with
  `PYTHONPATH=<worktree>/src:<worktree>` in front, over a home built by THAT commit's
  serving_home.py (its own schema). A `sitecustomize` probe on the servers' PYTHONPATH logs which
  file `import retrain` resolved to in every server process; the report quotes those lines;
- `generic bike_sharing`: `bentoml serve bentos.usecase.service:UseCaseService --arg usecase=bike_sharing`
  over the bike home of tests/support/bike_home.py (tables landed to 2011-06-02, `feast apply`,
  a LightGBM regression trained through the feature service, registered and promoted as champion,
  online store materialized to 2011-06-01 14:00).

Requests: the flight servers get the same bodies (bench/serve.py's rotation of the 2013-02-10 flights);
the bike server gets `{"rows": [...]}` of real hours of May 2011 rotated the same way. Ratios:
(a) flights HEAD / flights OLD (the issue's target), (b) generic bike / flights HEAD (informative:
different use cases, features and models; the same engine path vs the hand-written one).
Exit status 1 only when some request was answered non-2xx (never on a missed target).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/serve_generic.py` (bench/run.py)
    sys.path.insert(0, str(ROOT))

from bench.serve import Result, bodies, ensure_home, free_port, measure, start, stop, wait_up  # noqa: E402
from flight_delay.serving import SERVICE_IMPORT as FLIGHTS_SERVICE  # noqa: E402
from retrain.core.config import Settings, get_settings  # noqa: E402
from retrain.serving.runtime import serve_argv, serve_env  # noqa: E402

USECASE = "bike_sharing"
HEAD, OLD, BIKE = "flights HEAD", "flights OLD", "generic bike_sharing"
PROBE = '''\
import importlib.util, os, sys


class _RetrainProbe:
    """Logs the file `import retrain` resolves to in this process (bench/serve_generic.py)."""

    def find_spec(self, name, path=None, target=None):
        if name != "retrain":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.stderr.write(f"[bench-probe] pid {os.getpid()} retrain.__file__ = {spec and spec.origin}\\n")
        sys.stderr.flush()
        return spec


sys.meta_path.insert(0, _RetrainProbe())
'''


def git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def old_tree(commit: str, given: Path | None) -> Iterator[Path]:
    """A worktree of `commit` (created under a temporary directory and removed after, unless given)."""
    if given is not None:
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix=f"retrain-{commit[:9]}-")) / "tree"
    git("worktree", "add", "--detach", str(path), commit)
    try:
        yield path
    finally:
        git("worktree", "remove", "--force", str(path))
        shutil.rmtree(path.parent, ignore_errors=True)


def old_env(tree: Path, probe: Path) -> dict[str, str]:
    """The venv's interpreter running the old tree's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(probe), str(tree / "src"), str(tree)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def build_old_home(tree: Path, home: Path, probe: Path) -> None:
    """The flights fixture home built by the OLD commit's own tests/support/serving_home.py (its schema)."""
    if (home / "bentoml").exists():
        return
    code = ("import sys; from pathlib import Path; import retrain; print('building with', retrain.__file__); "
            "from tests.support.serving_home import build_serving_home, small_settings; "
            "build_serving_home(small_settings(Path(sys.argv[1])))")
    subprocess.run([sys.executable, "-c", code, str(home)], cwd=tree, env=old_env(tree, probe), check=True)


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def bike_home(home: Path) -> tuple[Settings, list[dict[str, Any]]]:
    """tests/support/bike_home.py's bike home (built once per work dir) and its May 2011 request rows."""
    import pandas as pd

    from retrain.usecase import featurestore as FS
    from retrain.usecase.serving import served_usecase

    env = {"RETRAIN_HOME": str(home), "RETRAIN_USECASE": USECASE, "BENTOML_HOME": str(home / "bentoml")}
    with patched_env(env):
        from tests.support.bike_home import build_bike_home, payload

        if not (home / "bentoml").exists():
            home.mkdir(parents=True, exist_ok=True)
            build_bike_home()
        spec, settings = served_usecase(USECASE)
        raw = FS.raw_rows(spec)
    ts = pd.to_datetime(raw["ts"], utc=True)
    may = raw[(ts >= pd.Timestamp("2011-05-01", tz="UTC")) & (ts < pd.Timestamp("2011-06-01", tz="UTC"))]
    return settings, [payload(r) for _, r in may.sort_values("ts").iterrows()]


def rotate(rows: list[dict[str, Any]], batch: int, n: int = 50) -> list[dict[str, Any]]:
    """bench/serve.py's rotation: `n` bodies of `batch` consecutive rows."""
    return [{"rows": [rows[(k * batch + j) % len(rows)] for j in range(batch)]} for k in range(n)]


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def ratio_rows(results: list[Result], num: str, den: str) -> list[str]:
    out = []
    for batch in sorted({r.batch for r in results}):
        a = next(r for r in results if r.batch == batch and r.target == num)
        b = next(r for r in results if r.batch == batch and r.target == den)
        p99, rps = a.p99_ms / b.p99_ms, a.rps / b.rps
        out.append(f"| {batch} | {p99:.3f} | {rps:.3f} | {'yes' if p99 <= 1.05 else 'no'} | "
                   f"{'yes' if rps >= 0.95 else 'no'} |")
    return out


def report(results: list[Result], args: argparse.Namespace, old_commit: str, probes: dict[str, list[str]],
           load: tuple[str, str], n_flights: int, n_hours: int) -> str:
    lines = [
        f"Command: `.venv/bin/python -m bench.serve_generic --duration {args.duration:g} --clients {args.clients} "
        f"--workers {args.workers} --rounds {args.rounds} --old-commit {args.old_commit}"
        f"{' --old-first' if args.old_first else ''}{' --fixed' if args.fixed else ''}`",
        f"Run: {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores (shared with other jobs), load average "
        f"{load[0]} at the start, {load[1]} at the end; {args.workers} worker(s) per server, {args.clients} "
        f"closed-loop clients, {args.duration:g} s per (target, batch) in {args.rounds} slices alternating the "
        f"three targets ({'OLD, HEAD' if args.old_first else 'HEAD, OLD'}, bike"
        f"{', same order every round' if args.fixed else '; the 6 orders of the three, one per round'}); "
        f"HEAD = {git('rev-parse', '--short', 'HEAD')} (+ uncommitted work of the tree), "
        f"OLD = {old_commit}; {n_flights} flights of 2013-02-10 / {n_hours} hours of May 2011 rotated through.",
        "",
        "| target | rows/request | requests | errors | p50 ms | p99 ms | requests/s | rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.target} | {r.batch} | {r.requests} | {r.errors} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
                     f"{r.rps:.1f} | {r.rps * r.batch:.0f} |")
    head = "| rows/request | p99 ratio | req/s ratio | p99 <= 1.05x | req/s >= 0.95x |"
    lines += ["", f"(a) flights HEAD / flights OLD ({old_commit}), the issue's target:", "", head,
              "|---:|---:|---:|---|---|", *ratio_rows(results, HEAD, OLD)]
    lines += ["", "(b) generic bike_sharing / flights HEAD (informative: different use case, same engine path "
              "vs the hand-written one):", "", head, "|---:|---:|---:|---|---|", *ratio_rows(results, BIKE, HEAD)]
    lines += ["", "Code each server ran (`import retrain` in the server processes, from the probe):", ""]
    for name, found in probes.items():
        lines.append(f"- {name}: " + ("; ".join(sorted(set(found))) or "no probe line") +
                     f" ({len(found)} server processes)")
    return "\n".join(lines) + "\n"


def probe_lines(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [ln.split("retrain.__file__ = ", 1)[1].strip() for ln in text.splitlines() if "[bench-probe]" in ln]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per (target, batch size)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="worker processes of each server")
    parser.add_argument("--batches", default="1,100")
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the targets per batch size")
    parser.add_argument("--fixed", action="store_true",
                        help="same target order every round (default: all 6 orders, each target in each position)")
    parser.add_argument("--old-commit", default="540d9bd", help="the last landed commit to compare against")
    parser.add_argument("--old-tree", type=Path, default=None, help="an existing checkout of --old-commit")
    parser.add_argument("--old-first", action="store_true", help="alternate OLD before HEAD (order check)")
    parser.add_argument("--work", type=Path, default=None, help="homes and logs (reused when built before)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir (homes, server logs)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args()

    load_start = loadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-generic-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    old_commit = git("rev-parse", "--short", args.old_commit)
    procs: list[subprocess.Popen[bytes]] = []
    results: list[Result] = []
    try:
        with old_tree(old_commit, args.old_tree) as tree:
            t0 = time.perf_counter()
            head_settings, flights = ensure_home(work / "flights-head")
            build_old_home(tree, work / "flights-old", probe)
            bike_settings, hours = bike_home(work / "bike")
            print(f"homes ready in {time.perf_counter() - t0:.0f} s under {work}", file=sys.stderr)

            extra = {"RETRAIN_SERVE_WORKERS": str(args.workers),
                     "BENTOML_CONFIG_OPTIONS": "api_server.logging.access.enabled=false"}

            def env_for(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
                env = serve_env(settings, extra)
                env.pop("RETRAIN_API_KEY", None)
                env.pop("PREFECT_API_URL", None)
                env["PYTHONPATH"] = (base or {}).get("PYTHONPATH") or os.pathsep.join(
                    [str(probe)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
                return env

            from tests.support.serving_home import small_settings

            ports = {HEAD: free_port(), OLD: free_port(), BIKE: free_port()}
            log_of = {name: logs / f"{name.replace(' ', '-')}.log" for name in ports}
            servers = {
                HEAD: (serve_argv("127.0.0.1", ports[HEAD], service=FLIGHTS_SERVICE), env_for(head_settings), ROOT),
                OLD: (serve_argv("127.0.0.1", ports[OLD], service=FLIGHTS_SERVICE),
                      env_for(small_settings(work / "flights-old"), old_env(tree, probe)), tree),
                BIKE: (serve_argv("127.0.0.1", ports[BIKE], service="bentos.usecase.service:UseCaseService",
                                  args={"usecase": USECASE}), env_for(bike_settings), ROOT),
            }
            for name, (argv, env, cwd) in servers.items():
                procs.append(start(argv, env, cwd, log_of[name]))
            for proc, name in zip(procs, servers, strict=True):
                wait_up(f"http://127.0.0.1:{ports[name]}/readyz", proc)
            for batch in [int(b) for b in args.batches.split(",")]:
                flight_reqs, _ = bodies(flights, batch)
                targets = [(HEAD, f"http://127.0.0.1:{ports[HEAD]}/predict", flight_reqs),
                           (OLD, f"http://127.0.0.1:{ports[OLD]}/predict", flight_reqs),
                           (BIKE, f"http://127.0.0.1:{ports[BIKE]}/predict", rotate(hours, batch))]
                if args.old_first:
                    targets[:2] = targets[1::-1]
                for res in measure(targets, batch, args.clients, args.duration, args.rounds, permute=not args.fixed):
                    print(f"{res.target:22s} batch {batch:4d}: {res.requests} req, {res.errors} err, "
                          f"p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, {res.rps:.1f} req/s", file=sys.stderr)
                    results.append(res)
    finally:
        for proc in procs:
            stop(proc)
    probes = {name: probe_lines(log) for name, log in log_of.items()}
    text = report(results, args, old_commit, probes, (load_start, loadavg()), len(flights), len(hours))
    print(text)
    if args.out:
        args.out.write_text(text)
    failed = sum(r.errors for r in results)
    if failed:
        print(f"{failed} non-2xx answers; server logs in {logs}", file=sys.stderr)
    elif args.work is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
