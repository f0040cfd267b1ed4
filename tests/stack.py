"""Drives `parcours dev` and the `parcours` CLI as real processes, the way a user does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from starter import ports

PARCOURS = [sys.executable, "-m", "starter"]
# A test must not depend on the time of day it runs at: quiet hours are off unless a test turns
# them on, in the settings fixture and in the stacks started here.
NO_QUIET_HOURS = {"PARCOURS_QUIET_HOURS": "sms=off,push=off"}


def free_port() -> int:
    """A free port for a server a test starts; pytest-xdist workers each pick among their own
    share of the ports, so two tests starting servers at the same moment never pick the same."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    return ports.free_port(int(worker), int(workers))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def stat_fields(text: str) -> list[str]:
    """The fields of a `/proc/PID/stat` line after the command name, which may hold spaces:
    everything after its closing parenthesis is fixed (state, parent, ...)."""
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Every process under `pid`: its children, theirs, and so on."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_fields(stat.read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def process_name(pid: int) -> str | None:
    """The process's command name (`/proc/PID/comm`), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def page_processes(worker: int) -> list[int]:
    """A worker's page processes: what multiprocessing's fork server under it forked."""

    def forked(pid: int) -> bool:
        try:
            return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    servers = [pid for pid in descendants(worker) if forked(pid)]
    return [pid for server in servers for pid in descendants(server) if forked(pid)]


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class DevStack:
    """`parcours dev` on a private data dir and free ports."""

    def __init__(self, data_dir: Path, *apply: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.port, self.ui_port, self.api_port = free_port(), free_port(), free_port()
        self.codec_port = free_port()  # used when the env sets PARCOURS_ENCRYPTION_KEY
        self.apply = apply
        self.process: subprocess.Popen[bytes] | None = None
        self.output = data_dir.parent / f"dev-{self.port}.out"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **NO_QUIET_HOURS,
            **self.extra_env,
            "PARCOURS_DATA_DIR": str(self.data_dir),
        }

    def start(self, port: int | None = None) -> DevStack:
        self.port = port or self.port
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *PARCOURS, "dev",
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--api-port", str(self.api_port),
            "--codec-port", str(self.codec_port),
        ]  # fmt: skip
        for path in self.apply:
            command += ["--apply", str(path)]
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        wait_until(
            lambda: "Parcours is running" in self.text() or self.process.poll() is not None,
            120,
            "parcours dev",
        )
        assert self.process.poll() is None, self.text()
        return self

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def pid(self, name: str) -> int:
        return int((self.data_dir / f"{name}.pid").read_text())

    def kill9(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGKILL)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*PARCOURS, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"parcours {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def deliveries(self, profile: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(
            self.cli("deliveries", "--profile", profile, "--json").stdout
        )
        return result
