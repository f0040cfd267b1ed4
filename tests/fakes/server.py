"""What every fake provider shares: an HTTP server on 127.0.0.1, a record of what it accepted,
and scripted trouble (failures, rate limits, hangs, random storms).

A subclass answers requests in `handle`; it calls `begin_attempt` on its send endpoint, which
applies the scripted trouble, and `accept` to record a message it took.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import urlsplit

Record = TypeVar("Record")


@dataclass(frozen=True)
class Failure:
    status: int
    retry_after: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Any
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class _Storm:
    def __init__(self, rate: float, failures: list[Failure], seed: int) -> None:
        self.rate = rate
        self.failures = failures
        self.random = random.Random(seed)

    def draw(self) -> Failure | None:
        if self.random.random() >= self.rate:
            return None
        return self.random.choice(self.failures)


class FakeProvider(Generic[Record]):
    """Use as a context manager, or start() and stop()."""

    name = "fake"

    def __init__(self) -> None:
        self.url = ""
        self._lock = threading.Condition()
        self._records: list[Record] = []
        self._attempts = 0
        self._lookups = 0
        self._failures: list[Failure] = []
        self._hangs: list[float] = []
        self._storm: _Storm | None = None
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # Handler threads are daemons, so a hung answer never blocks stop() or interpreter exit.
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            # A short poll keeps stop() (which waits for the loop to notice) from costing 0.5 s.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fake-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in hang_next
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting and inspection ----------------------------------------------------------

    @property
    def requests(self) -> list[Record]:
        """Every accepted message, oldest first (a snapshot)."""
        with self._lock:
            return list(self._records)

    @property
    def attempts(self) -> int:
        """Every call to the send endpoint, whatever the answer."""
        with self._lock:
            return self._attempts

    @property
    def lookups(self) -> int:
        """Every question about messages already sent (SendGrid's Email Activity, Twilio's
        message list): what a sender asks when it does not know whether a send went through."""
        with self._lock:
            return self._lookups

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `times` sends with `status`, before auth or payload checks."""
        with self._lock:
            self._failures.extend(Failure(status, retry_after, message) for _ in range(times))

    def fail_randomly(self, rate: float, failures: Iterable[Failure], *, seed: int = 0) -> None:
        """A storm: each send fails with probability `rate`, as one of `failures` at random
        (seeded, so a run can be repeated). `rate=0` ends it."""
        with self._lock:
            self._storm = _Storm(rate, list(failures), seed) if rate > 0 else None

    def hang_next(self, seconds: float, times: int = 1) -> None:
        """Sleep `seconds` before answering the next `times` sends.

        The request is then handled normally, so a client that gave up may still find its
        message accepted, as it can happen with the real service.
        """
        with self._lock:
            self._hangs.extend([seconds] * times)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Record]:
        """Block until at least `count` messages were accepted; return them all."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._records) >= count, timeout):
                raise AssertionError(
                    f"{type(self).__name__}: expected {count} accepted message(s) within "
                    f"{timeout}s, got {len(self._records)} after {self._attempts} attempt(s)"
                )
            return list(self._records)

    # -- for subclasses (called from handler threads) --------------------------------------

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def begin_attempt(self) -> Failure | None:
        """Count a send and apply scripted trouble: returns the failure to answer with, if any.
        Returns only after any scripted hang (or at once when the fake is stopping)."""
        with self._lock:
            self._attempts += 1
            hang = self._hangs.pop(0) if self._hangs else 0.0
            failure = self._failures.pop(0) if self._failures else None
            if failure is None and self._storm is not None:
                failure = self._storm.draw()
        if hang:
            self._stopping.wait(hang)
        return failure

    def count_lookup(self) -> None:
        with self._lock:
            self._lookups += 1

    def accept(self, record: Record) -> None:
        with self._lock:
            self._records.append(record)
            self._lock.notify_all()


def _handler_for(fake: FakeProvider[Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nginx"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            reply = fake.handle(Request(self.command, parts.path, parts.query, self.headers, body))
            if fake._stopping.is_set():
                return
            try:
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. after hang_next); nothing left to tell it

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler
