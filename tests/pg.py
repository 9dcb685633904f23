"""A throwaway PostgreSQL server for the tests, started from Debian's `postgresql` package.

Nothing on the machine is assumed running: `PgCluster` runs initdb into a
temporary directory and starts a server on a free loopback port (so parallel
test runs never collide), as the `postgres` user when the tests run as root
(the server refuses to run as root). `BMO_TEST_POSTGRES_URL` points the tests at
an existing server instead. Each test gets a database of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tests.e2e.server import free_port

__all__ = ["ENV_TEST_POSTGRES_URL", "PgCluster", "PgServer", "database_url", "pg_bin_dir", "pg_server"]

ENV_TEST_POSTGRES_URL = "BMO_TEST_POSTGRES_URL"


def pg_bin_dir() -> Path:
    """The newest installed server binaries (Debian keeps them out of PATH)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: install the Debian package `postgresql` "
        f"(scripts/test does), or set {ENV_TEST_POSTGRES_URL} to an existing server"
    )


class PgServer:
    """A server the tests may create and drop databases on."""

    admin_url: str

    def url(self, dbname: str) -> str:
        params = conninfo_to_dict(self.admin_url)
        params["dbname"] = dbname
        return _as_url(params)

    def restart(self) -> None:  # pragma: no cover - only a cluster of our own can
        raise RuntimeError("cannot restart a server the tests did not start")


def _as_url(params: dict[str, object]) -> str:
    user = params.get("user") or "postgres"
    password = f":{params['password']}" if params.get("password") else ""
    host = params.get("host") or "127.0.0.1"
    return f"postgresql://{user}{password}@{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


@dataclass
class ExistingServer(PgServer):
    admin_url: str


@dataclass
class PgCluster(PgServer):
    """initdb + pg_ctl in a temporary directory; stopped and deleted by `stop`."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bmo-pg-")))
    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=pg_bin_dir)

    @property
    def admin_url(self) -> str:  # type: ignore[override]
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self) -> PgCluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        for attempt in range(3):
            try:
                self._pg_ctl_start()
                return self
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise RuntimeError(f"postgres did not start: {self.log()}") from None
                self.port = free_port()  # someone took the port between choosing and binding it
        return self

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=400 "
            "-c fsync=off -c full_page_writes=off -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (fast: sessions are cut), stay down `down_s` (the outage), start on the same port."""
        self.halt()
        time.sleep(down_s)  # the length of the outage under test, not a wait for anything
        self.resume()

    def halt(self) -> None:
        """Stop the server (fast: sessions are cut) and leave it down until `resume`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the halted server again, on the same port."""
        self._pg_ctl_start()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.root, timeout=120)


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    """The existing server named by BMO_TEST_POSTGRES_URL, else a throwaway cluster."""
    existing = os.environ.get(ENV_TEST_POSTGRES_URL)
    if existing:
        yield ExistingServer(existing)
        return
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def database_url(server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards (its sessions cut)."""
    name = f"bmo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.url(name)
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(server.admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the server is restarting (a test restarted it)
