"""`make bench`: run every benchmark in turn; each compares against a floor or peer in the same run.

Each script prints its own markdown section; copy what you measured into bench/RESULTS.md with the
command line. Pass names to run a subset: `make bench BENCH_ARGS="ingest pit"`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES: dict[str, list[str]] = {
    "ingest": ["bench/ingest.py", "--repeat", "3"],
    "pit": ["bench/pit.py", "--repeat", "2"],
    "train": ["bench/train.py", "--repeats", "3"],
    "monitor": ["bench/monitor.py", "--rows", "100000", "--repeat", "5"],
    "serve": ["bench/serve.py", "--duration", "20"],
    "serve_generic": ["bench/serve_generic.py", "--duration", "15"],
    "loop": ["bench/loop.py"],
    "day": ["bench/day_step.py"],
    "backtest": ["bench/backtest.py"],
}


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all that exist); returns the number that failed."""
    names = (argv if argv is not None else sys.argv[1:]) or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed = 0
    root = Path(__file__).resolve().parents[1]
    for name in names:
        script, *args = BENCHES[name]
        if not (root / script).exists():
            print(f"== {name}: {script} missing, skipped")
            continue
        print(f"== {name}: {' '.join([script, *args])}", flush=True)
        module = script.removesuffix(".py").replace("/", ".")  # as a module: the repo root is on the path
        failed += subprocess.call([sys.executable, "-m", module, *args], cwd=root) != 0
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
