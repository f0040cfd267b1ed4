"""Free local ports for the servers a stack starts.

A port probed with a bind to port 0 comes from the kernel's ephemeral range, which every
outgoing connection draws from too: between the probe and the server's own bind, any client's
connect can take it (a CI run lost its HTTP API this way, "address already in use"). Ports
outside that range are only ever taken by a bind that names them.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default range, for systems that do not say theirs.
DEFAULT_EPHEMERAL = (32768, 60999)
# Below this are the well-known and commonly configured ports (5432, 7233, 8000, 8080, ...).
LOWEST = 10000
ATTEMPTS = 100


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(word) for word in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # A port left in TIME_WAIT by a stopped server can be listened on again.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(share: int = 0, shares: int = 1) -> int:
    """A port nothing listens on, outside the ephemeral range, whose number is `share` modulo
    `shares`: processes that pick ports at the same time with different shares never pick the
    same one."""
    low, high = ephemeral_range()
    ranges = (range(LOWEST, low), range(high + 1, 65536))
    candidates = [port for ports in ranges for port in ports if port % shares == share]
    for port in random.sample(candidates, min(ATTEMPTS, len(candidates))):
        if port_free(port):
            return port
    # Every port tried is taken (or the range leaves none): the kernel's choice is still free now.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
