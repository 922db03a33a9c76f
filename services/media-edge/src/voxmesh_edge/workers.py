"""Several edge processes in one pod, each owning its own sessions.

One Python process runs one event loop on one core, so an edge pod with more
cores runs `VOXMESH_EDGE_WORKERS` worker processes under a small supervisor
(this module). The workers are members of the session ring in their own
right, named `{pod}.w{i}`: a session is placed on, claimed by and forwarded to
a worker exactly as it would be to a pod, so the routing code has no second
level. Every worker

- listens on the pod's HTTP port with SO_REUSEPORT (the kernel spreads
  connections over them; whichever gets a request routes it like any member),
- and on its own port, `port + 1 + i`, where peers (other pods' workers and
  its siblings) forward the signaling of the sessions it owns;
- binds its media to its own slice of the ICE port range.

Pods are what the membership lists (a static list or EndpointSlices); each pod
member expands to its workers at `host:port+1+i`. Every pod of a deployment
runs the same number of workers (one StatefulSet, one setting), which is what
makes the expansion the same on every edge.

The pod's /metrics is the sum over its workers (prometheus_client's
multiprocess mode: the supervisor gives the workers a shared directory), a
drain reaching any worker drains all of them, and the supervisor passes
SIGTERM on and restarts a worker that dies (its sessions are lost with it,
like a pod's; the clients reconnect with their resume tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile

from voxmesh.core.routing.membership import Member, MemberSet
from voxmesh_edge.settings import EdgeSettings

log = logging.getLogger(__name__)

WORKER_ENV = "VOXMESH_EDGE_WORKER_INDEX"


def member_name(pod: str, index: int, workers: int) -> str:
    return pod if workers <= 1 else f"{pod}.w{index}"


def worker_port(port: int, index: int) -> int:
    return port + 1 + index


def expand(members: MemberSet, workers: int, default_port: int) -> MemberSet:
    """Each pod member -> its workers, at their own ports."""
    if workers <= 1:
        return members

    def workers_of(m: Member) -> list[Member]:
        base = m.port or default_port
        return [Member(member_name(m.name, i, workers), m.host, worker_port(base, i)) for i in range(workers)]

    return MemberSet.of(
        [w for m in members.ready.values() for w in workers_of(m)],
        [w for m in members.draining.values() for w in workers_of(m)],
    )


def sibling_urls(settings: EdgeSettings) -> list[str]:
    """The other workers of this pod, on loopback."""
    return [f"http://127.0.0.1:{worker_port(settings.port, i)}" for i in range(settings.workers) if i != settings.worker_index]


def ice_port_slice(settings: EdgeSettings, index: int) -> tuple[int, int]:
    """Worker `index`'s share of the ICE port range (processes cannot share a UDP port)."""
    lo, hi = settings.ice_port_min, settings.ice_port_max
    if not lo and not hi:
        return 0, 0
    span = (hi - lo + 1) // settings.workers
    if span < 1:
        raise ValueError(f"ICE port range {lo}-{hi} is smaller than {settings.workers} workers")
    start = lo + index * span
    return start, (hi if index == settings.workers - 1 else start + span - 1)


async def supervise(settings: EdgeSettings) -> None:
    """Run `settings.workers` edge workers until SIGTERM/SIGINT, then pass the
    signal on (each drains) and wait for them."""
    metrics_dir = tempfile.mkdtemp(prefix="voxmesh-edge-metrics-")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs: dict[int, asyncio.subprocess.Process] = {}

    async def start(i: int) -> None:
        env = {**os.environ, WORKER_ENV: str(i), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        procs[i] = await asyncio.create_subprocess_exec(sys.executable, "-m", "voxmesh_edge", env=env)
        log.info("worker started", extra={"worker": i, "pid": procs[i].pid, "port": worker_port(settings.port, i)})

    async def keep(i: int) -> None:
        backoff = 0.5
        while True:
            code = await procs[i].wait()
            _mark_dead(metrics_dir, procs[i].pid)
            if stop.is_set():
                return
            log.error("worker exited; restarting it", extra={"worker": i, "code": code, "retry_in_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(10.0, backoff * 2)
            if stop.is_set():
                return
            await start(i)

    for i in range(settings.workers):
        await start(i)
    keepers = [loop.create_task(keep(i)) for i in range(settings.workers)]
    await stop.wait()
    log.info("stopping workers", extra={"workers": settings.workers})
    for p in procs.values():
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    # Each worker drains (up to drain_grace_s) before it exits.
    await asyncio.gather(*keepers, return_exceptions=True)


async def drain_siblings(settings: EdgeSettings, me: str) -> None:
    """A drain that reached one worker (the pod's port) drains them all."""
    import aiohttp

    from voxmesh_edge.routing import FORWARDED_BY, FORWARD_TOKEN

    headers = {FORWARDED_BY: me}
    if settings.forward_secret:
        headers[FORWARD_TOKEN] = settings.forward_secret
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for url in sibling_urls(settings):
            try:
                async with http.post(f"{url}/v1/admin/drain", headers=headers) as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("could not drain a sibling worker", extra={"url": url, "error": str(exc)})


def metrics_text() -> bytes:
    """/metrics: this process's registry, or with worker processes the sum
    over all of the pod's workers (prometheus_client multiprocess mode)."""
    from prometheus_client import CollectorRegistry, generate_latest

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest()
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def _mark_dead(metrics_dir: str, pid: int) -> None:
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)


def worker_settings(settings: EdgeSettings) -> EdgeSettings:
    """This process's settings when it is a worker (the supervisor set
    VOXMESH_EDGE_WORKER_INDEX): its slice of the ICE port range."""
    if settings.workers <= 1 or settings.worker_index < 0:
        return settings
    lo, hi = ice_port_slice(settings, settings.worker_index)
    return dataclasses.replace(settings, ice_port_min=lo, ice_port_max=hi)
