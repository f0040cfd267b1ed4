"""Throwaway PostgreSQL servers for the tests (Debian's `postgresql` binaries): one for the test
session, and private ones for tests that stop theirs (tests/faults).

PostgreSQL refuses to run as root, so as root the cluster is created and run as the
`postgres` user, in a data dir that user owns. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tests.stack import free_port


def bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """A cluster of its own in a temporary directory, on a free port it keeps across restarts."""

    def __init__(self) -> None:
        binaries = bindir()
        if binaries is None:
            raise RuntimeError(
                "PostgreSQL is not installed: `make test` installs Debian's `postgresql` package"
            )
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="parcours-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        # A server URL (no database part).
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.binaries / program), *args],
            capture_output=True,
            text=True,
            cwd=self.root,
        )
        if check and done.returncode != 0:
            # What PostgreSQL said, so a test that cannot get its server says why.
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}{tail}"
            )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
            "-w", "start",
        )  # fmt: skip

    def stop(self, mode: Literal["fast", "immediate"] = "immediate") -> None:
        """`immediate` is a crash: every backend killed, no checkpoint, recovery at start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed afterwards."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()
