"""Session routing: which member (media-edge pod, llm replica) serves a session.

- `ring`: rendezvous hashing of a session id over member names (pure, stdlib only).
- `membership`: the current ready + draining members, static or from Kubernetes
  EndpointSlices (needs aiohttp).
- `owners`: the owner of every live session, recorded in Redis (needs redis).

Only `ring` is imported eagerly, so a process that only hashes does not pull in
aiohttp or redis; the other names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from voxmesh.core.routing.ring import EmptyRingError, Ring

_LAZY = {
    "Member": "membership",
    "MemberSet": "membership",
    "Membership": "membership",
    "StaticMembership": "membership",
    "EndpointSliceMembership": "membership",
    "KubeConfig": "membership",
    "SessionOwners": "owners",
}

__all__ = ["EmptyRingError", "Ring", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"voxmesh.core.routing.{module}"), name)
