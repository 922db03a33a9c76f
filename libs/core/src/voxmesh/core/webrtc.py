"""WebRTC settings shared by the edge and the clients."""

from __future__ import annotations


def configure_ice_hosts(hosts: tuple[str, ...] | list[str]) -> None:
    """Offer exactly these addresses as ICE host candidates (and bind media to
    them). aioice offers no loopback address by default and looks the list up
    per connection from a module-level function; one process serves one
    network configuration, so setting it process-wide is the intended scope.
    An empty list keeps aioice's default (every non-loopback interface)."""
    import aioice.ice

    if hosts:
        chosen = list(hosts)
        aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: [
            h for h in chosen if (":" in h and use_ipv6) or (":" not in h and use_ipv4)
        ]


_PORT_RANGE: tuple[int, int] | None = None
_next_port: dict[str, int] = {}


def configure_ice_port_range(port_min: int, port_max: int) -> None:
    """Bind ICE host candidates to UDP ports in [port_min, port_max] (both 0:
    any ephemeral port, aioice's default), so a cluster can open exactly that
    range in its firewall or on a hostNetwork node.

    aioice binds host candidates with port 0 inside
    Connection.get_component_candidates and has no option for a range. We wrap
    that method: host candidates are bound here, in the range, exactly as aioice
    would bind them (same protocol class, candidate fields and socket buffer);
    server-reflexive candidates are gathered for those sockets the way aioice
    does; the TURN relay candidate is left to aioice itself (called with no host
    addresses), since its local socket only talks to the TURN server. Ports are
    taken round robin from a cursor per address, skipping ports in use, so a
    port freed by a closed session is not reused at once (late packets of the
    old session do not reach the new one)."""
    global _PORT_RANGE
    import aioice.ice as ice

    if not port_min and not port_max:
        _PORT_RANGE = None
        return
    if not (0 < port_min <= port_max <= 65535):
        raise ValueError(f"bad ICE port range {port_min}-{port_max}")
    _PORT_RANGE = (port_min, port_max)
    if getattr(ice.Connection.get_component_candidates, "_voxmesh_ranged", False):
        return
    original = ice.Connection.get_component_candidates

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5):
        if _PORT_RANGE is None:
            return await original(self, component, addresses, timeout)
        return await _ranged_candidates(self, original, component, addresses, timeout)

    get_component_candidates._voxmesh_ranged = True  # type: ignore[attr-defined]
    ice.Connection.get_component_candidates = get_component_candidates


def _bind_in_range(address: str):
    import errno
    import socket

    assert _PORT_RANGE is not None
    lo, hi = _PORT_RANGE
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    span = hi - lo + 1
    start = _next_port.get(address, lo)
    for i in range(span):
        port = lo + (start - lo + i) % span
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        sock.setblocking(False)
        _next_port[address] = lo + (port - lo + 1) % span
        return sock
    raise OSError(errno.EADDRINUSE, f"no free UDP port in {lo}-{hi} on {address}")


async def _ranged_candidates(conn, original, component: int, addresses: list[str], timeout: int):
    import asyncio
    import ipaddress
    import logging
    import socket

    import aioice.ice as ice
    from aioice import turn
    from aioice.candidate import Candidate, candidate_foundation, candidate_priority

    loop = asyncio.get_running_loop()
    candidates = []
    host_protocols = []
    for address in addresses:
        try:
            sock = _bind_in_range(address)
            _, protocol = await loop.create_datagram_endpoint(lambda: ice.StunProtocol(conn), sock=sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE)
        except OSError as exc:
            logging.getLogger("voxmesh.webrtc").warning("cannot bind an ICE host candidate", extra={"address": address, "error": str(exc)})
            continue
        host_protocols.append(protocol)
        addr = protocol.transport.get_extra_info("sockname")
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", addr[0]), component=component, transport="udp",
            priority=candidate_priority(component, "host"), host=addr[0], port=addr[1], type="host",
        )
        candidates.append(protocol.local_candidate)
    conn._protocols += host_protocols
    tasks = []
    if conn.stun_server:
        for protocol in host_protocols:
            if ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                tasks.append(asyncio.ensure_future(ice.server_reflexive_candidate(protocol, conn.stun_server)))
    relay = asyncio.ensure_future(original(conn, component, [], timeout))  # TURN only
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in done:
            if task.exception() is None:
                candidates.append(task.result()[0])
        for task in pending:
            task.cancel()
    candidates += await relay
    return candidates
