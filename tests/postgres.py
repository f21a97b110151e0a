"""A throw-away PostgreSQL cluster for the tests and benchmarks.

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres``
user (Debian's package creates it): ``initdb`` and ``pg_ctl`` run through
``runuser`` when the tests run as root. The cluster listens on a Unix socket
in its own directory only (``listen_addresses=''``), so no TCP port is taken
and two clusters never collide; every database is reached as
``postgresql://postgres@/DB?host=SOCKETDIR&port=PORT``. :meth:`Cluster.stop`
stops it by its postmaster's PID file (``pg_ctl stop``) and removes it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

PORT = 5432  # names the socket file only: nothing listens on TCP


def pg_bin(name: str) -> str | None:
    """The newest installed PostgreSQL's ``name`` program (Debian keeps them off PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


class Cluster:
    """One PostgreSQL cluster in a temporary directory (module rules)."""

    def __init__(self, durable: bool = False, settings: tuple[str, ...] = ()) -> None:
        """``settings``: more ``-c name=value`` server settings (benchmarks tune memory)."""
        initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or self.pg_ctl is None:
            raise FileNotFoundError("PostgreSQL's initdb and pg_ctl are not installed (scripts/setup.sh: postgresql)")
        self.base = Path(tempfile.mkdtemp(prefix="aaa_vpn-pg-"))
        self.data, self.sockets, self.log = self.base / "data", self.base / "run", self.base / "postgres.log"
        self.sockets.mkdir()
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.base, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.base.chmod(0o755)
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        settings = [
            f"-p {PORT}",
            f"-k {self.sockets}",
            "-c listen_addresses=''",
            "-c max_connections=200",
            *(f"-c {setting}" for setting in settings),
        ]
        if not durable:
            # A throw-away cluster for tests: nothing needs to survive a crash of the machine.
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-o", " ".join(settings), "start"])
        self.running = True

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.sockets}&port={PORT}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.split("/")[3].split("?")[0]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self._run([str(self.pg_ctl), "-D", str(self.data), "-m", "fast", "-w", "stop"])
            finally:
                shutil.rmtree(self.base, ignore_errors=True)
