"""`parcours dev`: the whole stack on this machine, for development and demos.

It runs the Temporal dev server (from the installed `temporal` binary, persisted under the data
dir) and a worker as child processes, waits until each is ready, records the addresses in
`DIR/parcours.toml`, and stops both on Ctrl-C or SIGTERM. Children are tied to this process
(PR_SET_PDEATHSIG), so even a `kill -9` of `parcours dev` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from temporalio.common import SearchAttributeKey

from parcours import search_attributes as sa
from parcours.settings import Settings, write_config
from starter.binaries import temporal_cli
from starter.ports import free_port, port_free

READY_TIMEOUT = 90.0
# The dev server picks some of its ports itself while it starts, and another program can take
# one first: it then panics before it is ready. Starting it again picks new ports.
TEMPORAL_START_ATTEMPTS = 3
GO_CRASH_PREFIXES = ("panic: ", "fatal error: ")
STOP_TIMEOUT = 15.0
WORKER_READY_LINE = "worker polling task queue"
API_READY_LINE = "Uvicorn running on"
API_KEY_FILE = "api.key"
# The worker's two metrics listeners: free ports picked at start unless these are set, so two
# stacks (or a stack and a production worker) on one machine never fight over 9464/9465.
METRICS_VARIABLES = ("PARCOURS_WORKER_METRICS_ADDRESS", "PARCOURS_TEMPORAL_METRICS_ADDRESS")
CODEC_KEY_FILE = "codec.key"
DEFAULT_CODEC_PORT = 8081
# Relaxed durability for a development store: measured 2.8x faster than the default here, and
# a lost last write on power failure is acceptable on a laptop, not in production.
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=off")

console = Console(stderr=True, highlight=False, soft_wrap=True)


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, however it dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StackError(Exception):
    pass


class DevStack:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        ui_port: int,
        api_port: int,
        apply: Sequence[Path],
        codec_port: int = DEFAULT_CODEC_PORT,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.port, self.ui_port, self.api_port = port, ui_port, api_port
        self.codec_port = codec_port
        # Set when PARCOURS_ENCRYPTION_KEY is: the codec server the UI decodes through.
        self.codec_url: str | None = None
        self.apply = list(apply)
        self.logs = self.data_dir / "logs"
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        # Where each child's run starts in its log, which earlier runs' lines precede.
        self._log_starts: dict[str, int] = {}
        self.metrics: dict[str, str] = {}
        self._lock: IO[str] | None = None
        self._stopping = False

    def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self._take_lock():
            return 1
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._start()
            return self._supervise()
        except StackError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            self._stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _take_lock(self) -> bool:
        self._lock = (self.data_dir / "dev.pid").open("a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            pid = self._lock.read().strip() or "?"
            console.print(f"parcours dev is already running on {self.data_dir} (pid {pid})")
            return False
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stopping:
            return
        self._stopping = True
        raise KeyboardInterrupt

    def _start(self) -> None:
        settings = Settings.load(self.data_dir)
        ports = [
            ("Temporal", self.port, "--port"),
            ("Temporal UI", self.ui_port, "--ui-port"),
            ("HTTP API", self.api_port, "--api-port"),
        ]
        if settings.encryption_keys:
            ports.append(("codec server", self.codec_port, "--codec-port"))
        for name, port, option in ports:
            if not port_free(port):
                raise StackError(
                    f"port {port} ({name}) is in use: stop what uses it or pick another with {option}"
                )
        from activities.db import engine_for

        engine_for(settings.database_url)  # migrate before anything else writes
        if settings.encryption_keys:
            # Before Temporal: its UI is told where the codec server is when it starts.
            console.print(f"starting codec server on 127.0.0.1:{self.codec_port}")
            self._start_codec_server()
        address = f"127.0.0.1:{self.port}"
        console.print(
            f"starting Temporal dev server on {address} (store: {self.data_dir / 'temporal.db'})"
        )
        self._start_temporal(address)
        ui_url = f"http://127.0.0.1:{self.ui_port}"
        self.metrics = {
            name: os.environ.get(name) or f"127.0.0.1:{free_port()}" for name in METRICS_VARIABLES
        }
        write_config(
            settings.config_path,
            {
                "temporal": {
                    "address": address,
                    "namespace": "default",
                    "ui_url": ui_url,
                    "task_queue": settings.task_queue,
                },
                "api": {"url": f"http://127.0.0.1:{self.api_port}"},
                "database": {"url": settings.database_url},
            },
        )
        settings = Settings.load(self.data_dir)
        if self.apply:
            self._apply(settings)
        console.print("starting worker")
        self._start_worker()
        console.print("starting HTTP API")
        self._start_api()
        console.print(
            f"\n[bold green]Parcours is running.[/bold green]\n"
            f"  Temporal Web UI  {ui_url}\n"
            f"  Temporal         {address}\n"
            f"  HTTP API         http://127.0.0.1:{self.api_port} "
            f"(Authorization: Bearer {self._api_key()})\n"
            f"  Journey pages    http://127.0.0.1:{self.api_port}/login?key={self._api_key()}\n"
            f"  metrics          {self._metrics_urls()}\n"
            + (
                f"  codec server     http://127.0.0.1:{self.codec_port} "
                f"(payloads are encrypted; the Web UI decodes through it)\n"
                if self.codec_url
                else ""
            )
            + f"  data             {self.data_dir} (logs in {self.logs})\n\n"
            f"  try: parcours profiles set ada --email ada@example.com\n"
            f"       parcours events send signed_up --profile ada\n"
            f"       parcours deliveries\n\n"
            f"Ctrl-C stops everything."
        )

    def _start_worker(self) -> None:
        log = self.logs / "worker.log"
        env = {
            **os.environ,
            "PARCOURS_DATA_DIR": str(self.data_dir),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.port}",
            **self.metrics,
        }
        self._spawn("worker", [sys.executable, "-m", "worker"], log, env=env)
        self._wait_for_line("worker", log, WORKER_READY_LINE)

    def _metrics_urls(self) -> str:
        urls = [f"http://127.0.0.1:{self.api_port}/metrics (API, with the key)"]
        for name, what in zip(METRICS_VARIABLES, ("worker", "Temporal SDK"), strict=True):
            if self.metrics[name].lower() != "off":
                urls.append(f"http://{self.metrics[name]}/metrics ({what})")
        return ", ".join(urls)

    def _api_key(self) -> str:
        """This data dir's development key, made once and kept (0600) beside the data."""
        path = self.data_dir / API_KEY_FILE
        if not path.exists():
            path.write_text(f"dev-{secrets.token_urlsafe(24)}")
            path.chmod(0o600)
        return path.read_text().strip()

    def _start_api(self) -> None:
        log = self.logs / "api.log"
        env = {
            **os.environ,
            "PARCOURS_DATA_DIR": str(self.data_dir),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.port}",
            "PARCOURS_API_KEYS": self._api_key(),
        }
        command = [sys.executable, "-m", "starter", "api", "--port", str(self.api_port)]
        self._spawn("api", command, log, env=env)
        self._wait_for_line("api", log, API_READY_LINE)

    def _codec_key(self, settings: Settings) -> str:
        """The key in the UI's codec endpoint: PARCOURS_CODEC_KEYS's first, or one made once
        for this data dir (never the API's: the UI shows the endpoint to all its users)."""
        if settings.codec_keys:
            return settings.codec_keys[0].get_secret_value()
        path = self.data_dir / CODEC_KEY_FILE
        if not path.exists():
            path.write_text(f"codec-{secrets.token_urlsafe(24)}")
            path.chmod(0o600)
        return path.read_text().strip()

    def _start_codec_server(self) -> None:
        settings = Settings.load(self.data_dir)
        key = self._codec_key(settings)
        log = self.logs / "codec.log"
        origins = [f"http://127.0.0.1:{self.ui_port}", f"http://localhost:{self.ui_port}"]
        env = {
            **os.environ,
            "PARCOURS_DATA_DIR": str(self.data_dir),
            "PARCOURS_CODEC_KEYS": ",".join(
                [key, *(k.get_secret_value() for k in settings.codec_keys[1:])]
            ),
            "PARCOURS_CODEC_CORS_ORIGINS": ",".join([*origins, *settings.codec_cors_origins]),
        }
        command = [sys.executable, "-m", "starter", "codec-server", "--port", str(self.codec_port)]
        self._spawn("codec", command, log, env=env)
        self._wait_for_line("codec", log, API_READY_LINE)
        self.codec_url = f"http://127.0.0.1:{self.codec_port}/{key}"

    def _temporal_command(self) -> list[str]:
        command = [
            str(temporal_cli()), "server", "start-dev",
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--namespace", "default",
            "--log-level", "warn",
        ]  # fmt: skip
        for pragma in SQLITE_PRAGMAS:
            command += ["--sqlite-pragma", pragma]
        for key in sa.ALL:
            command += ["--search-attribute", f"{key.name}={_type_name(key)}"]
        if self.codec_url:
            command += ["--ui-codec-endpoint", self.codec_url]
        return command

    def _start_temporal(self, address: str) -> None:
        for attempt in range(1, TEMPORAL_START_ATTEMPTS + 1):
            self._spawn("temporal", self._temporal_command(), self.logs / "temporal.log")
            try:
                self._wait_for_temporal(address)
                return
            except StackError as exc:
                if attempt == TEMPORAL_START_ATTEMPTS or self.children["temporal"].poll() is None:
                    raise
                console.print(
                    f"{exc}\nstarting it again (attempt {attempt + 1} of {TEMPORAL_START_ATTEMPTS})"
                )

    def _spawn(
        self, name: str, command: list[str], log: Path, env: dict[str, str] | None = None
    ) -> None:
        self._log_starts[name] = log.stat().st_size if log.exists() else 0
        with log.open("ab") as handle:
            self.children[name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
                preexec_fn=_die_with_parent,
            )
        (self.data_dir / f"{name}.pid").write_text(str(self.children[name].pid))

    def _wait_for_temporal(self, address: str) -> None:
        from temporalio.client import Client

        async def ready() -> bool:
            try:
                client = await Client.connect(address)
                return await client.service_client.check_health()
            except Exception:
                return False

        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive("temporal")
            if asyncio.run(ready()):
                return
            time.sleep(0.3)
        raise StackError(
            f"Temporal did not become ready in {READY_TIMEOUT:.0f}s; see {self.logs / 'temporal.log'}"
        )

    def _wait_for_line(self, name: str, log: Path, marker: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive(name)
            with log.open("rb") as handle:
                handle.seek(self._log_starts[name])
                seen = handle.read().decode(errors="replace")
            if marker in seen:
                return
            time.sleep(0.2)
        raise StackError(f"the {name} did not become ready in {READY_TIMEOUT:.0f}s; see {log}")

    def _check_alive(self, name: str) -> None:
        process = self.children[name]
        if process.poll() is not None:
            log = self.logs / f"{name}.log"
            with log.open("rb") as handle:
                handle.seek(self._log_starts.get(name, 0))
                lines = handle.read().decode(errors="replace").strip().splitlines()
            # A Go panic ends with its goroutine's stack: the reason is the line above it.
            cause = [line for line in lines if line.startswith(GO_CRASH_PREFIXES)][:1]
            tail = lines[-5:]
            raise StackError(
                f"the {name} exited with code {process.returncode}; "
                + (f"{cause[0]}; " if cause and cause[0] not in tail else "")
                + f"last lines of {log}:\n  "
                + "\n  ".join(tail)
            )

    def _apply(self, settings: Settings) -> None:
        from activities.apply import apply_paths
        from activities.db import engine_for
        from parcours.loader import LoadFailed

        try:
            results = apply_paths(engine_for(settings.database_url), self.apply)
        except LoadFailed as exc:
            raise StackError(
                "cannot apply "
                + ", ".join(map(str, self.apply))
                + ":\n  "
                + "\n  ".join(map(str, exc.errors))
            ) from None
        for result in results:
            console.print(f"  {result}")

    def _supervise(self) -> int:
        restarts: list[float] = []
        while True:
            self._check_alive("temporal")
            if self.children["api"].poll() is not None:
                console.print("the HTTP API exited: starting it again")
                self._start_api()
            if "codec" in self.children and self.children["codec"].poll() is not None:
                console.print("the codec server exited: starting it again")
                self._start_codec_server()
            worker = self.children["worker"]
            if worker.poll() is not None:
                # A crashed worker loses nothing (Temporal keeps every entry), so bring a new
                # one up, as production would; give up if it keeps crashing.
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 5:
                    self._check_alive("worker")
                console.print(
                    f"the worker exited with code {worker.returncode}: starting a new one"
                )
                self._start_worker()
            time.sleep(0.5)

    def _stop(self) -> None:
        # The worker first, so it finishes its tasks while Temporal can still record them.
        for name in ("api", "worker", "temporal", "codec"):
            process = self.children.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            console.print(f"stopping {name}")
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _type_name(key: SearchAttributeKey[Any]) -> str:
    # The CLI's names for the types: KEYWORD -> Keyword, INT -> Int.
    return key.indexed_value_type.name.capitalize()
