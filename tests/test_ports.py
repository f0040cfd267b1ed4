import socket
from pathlib import Path

import pytest

from starter import ports


def test_a_free_port_is_outside_the_range_outgoing_connections_draw_from() -> None:
    low, high = ports.ephemeral_range()
    picked = {ports.free_port() for _ in range(50)}
    assert all(ports.LOWEST <= port < low or high < port < 65536 for port in picked)
    # Picked at random, so two stacks starting at once rarely even try the same port.
    assert len(picked) > 40


def test_a_free_port_is_in_its_share_and_not_in_use() -> None:
    assert {ports.free_port(2, 3) % 3 for _ in range(20)} == {2}
    port = ports.free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert not ports.port_free(port)
    assert ports.port_free(port)


def test_the_ephemeral_range_falls_back_to_linuxs_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert ports.ephemeral_range() == ports.DEFAULT_EPHEMERAL
    (tmp_path / "range").write_text("20000\t50000\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE", tmp_path / "range")
    assert ports.ephemeral_range() == (20000, 50000)
