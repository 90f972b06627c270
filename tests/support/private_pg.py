"""A private, throwaway PostgreSQL cluster that a test may stop, restart and delete.

The shared server of `RETRAIN_TEST_PG_ADMIN` must never be restarted by a test (other runs use it);
a fault-injection test starts its own cluster instead: `initdb` into a temporary directory, `pg_ctl
start` on a free loopback port, and `pg_ctl stop` + delete in the end. As root, `initdb` refuses to
run, so the cluster belongs to the `postgres` system user and the binaries run under `runuser`.
When the binaries are missing or cannot start a cluster, the test skips (or fails under
RETRAIN_REQUIRE_SERVICES=1) with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.services import service_unavailable

CLUSTER_USER = "postgres"


def pg_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<major>/bin` that has `initdb` and `pg_ctl`, else one on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateCluster:
    """One cluster in `root` (data, socket and log), listening on 127.0.0.1:`port`."""

    def __init__(self, bin_dir: Path, root: Path, port: int, as_user: str | None) -> None:
        self.bin_dir, self.root, self.port, self.as_user = bin_dir, root, port, as_user
        self.data = root / "data"
        self.log = root / "server.log"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *args]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout.strip()} {result.stderr.strip()} {self.log_tail()}")
        return result

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop (`fast`: in-flight transactions are rolled back, sessions cut) and start again."""
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        """This private cluster's URL (built, not spelled: the shared server's address lives in one place)."""
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port,
                          database=database).render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster; stopped and deleted afterwards, whatever the test did to it."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        service_unavailable("PostgreSQL binaries (initdb, pg_ctl)", FileNotFoundError("initdb/pg_ctl not found"),
                            "/usr/lib/postgresql/*/bin")
    as_user: str | None = None
    root = Path(tempfile.mkdtemp(prefix="retrain-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
        try:
            entry = pwd.getpwnam(CLUSTER_USER)
        except KeyError as exc:
            shutil.rmtree(root, ignore_errors=True)
            service_unavailable("PostgreSQL cluster user", exc, str(bin_dir))
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = CLUSTER_USER
    cluster = PrivateCluster(bin_dir, root, free_port(), as_user)
    try:
        try:
            cluster.initdb()
            cluster.start()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            service_unavailable("private PostgreSQL cluster", exc, str(bin_dir))
        yield cluster
    finally:
        if cluster.data.exists() and cluster.running():
            cluster._run("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
