"""Real servers for tests: free ports, a throwaway redis-server, waiting for a
port or a gRPC health check."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator


# Ports handed out by this process (two servers of one stack must not get the same).
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port nothing listens on, for a server a test is about to start.

    Not one the kernel picks (bind to port 0): those come from the ephemeral
    range, which every outgoing connection also draws from, so between this
    probe and the server's bind a client socket can take the port ("Address
    already in use": a whole fault-test stack failed so). Below the ephemeral
    range nothing takes a port unasked; random, so parallel test processes rarely
    pick the same one, and probed with a bind on all interfaces, as servers bind."""
    lo, _ = _ephemeral_range()
    top = min(lo, 32768) - 1
    if top > 12000:
        rng = random.Random()
        for _ in range(500):
            port = rng.randint(10000, top)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def wait_for_grpc_health(target: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {target} was healthy")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not healthy within {timeout}s")


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after `grace` seconds; reaped."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def redis_server(workdir: pathlib.Path, port: int | None = None, appendonly: bool = True) -> Iterator[str]:
    """A real redis-server on loopback; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec", "--protected-mode", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc, grace=5)


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def serving_in_process(serve, port: int, timeout: float = 10.0):
    """Run a service's `serve(stop_event)` coroutine in this event loop and
    yield a channel to it on 127.0.0.1:`port`; stop it gracefully after."""
    import asyncio

    from voxmesh.core.grpc_client import channel

    stop = asyncio.Event()
    task = asyncio.create_task(serve(stop))
    ch = channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(ch.channel_ready(), timeout)
        yield ch
    finally:
        await ch.close()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout)
