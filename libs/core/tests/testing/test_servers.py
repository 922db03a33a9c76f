"""The test servers' port picker: ports a client socket cannot take between the
probe and the server's bind."""

from __future__ import annotations

import socket

from voxmesh.testing.servers import _ephemeral_range, free_port


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable():
    lo, _ = _ephemeral_range()
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < min(lo, 32768) for p in ports)
    with socket.socket() as s:  # as a server binds it
        s.bind(("", ports[-1]))
        s.listen()


def test_a_port_in_use_is_skipped(monkeypatch):
    import voxmesh.testing.servers as servers

    with socket.socket() as held:
        for port in range(20000, 30000):  # a listener inside the picker's range
            try:
                held.bind(("", port))
                break
            except OSError:
                continue
        held.listen()

        class Picks:
            """Test double of random.Random: the held port first, then the next ones."""

            def __init__(self):
                self.seq = iter(range(port, port + 50))

            def randint(self, lo, hi):
                return next(self.seq)

        monkeypatch.setattr(servers.random, "Random", Picks)
        monkeypatch.setattr(servers, "_handed_out", set())
        got = free_port()
        assert got != port and port < got < port + 50
