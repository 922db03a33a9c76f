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
