"""The whole system as local processes: Redis and the five services with the
CPU defaults. `voxmesh up` (and so `make run`) uses it, and so do the
end-to-end and fault tests, so what a newcomer runs is what CI tests.

`replicas` runs several processes of a service (the fault tests run two
orchestrators, two stt and two edges); every edge's upstream target lists all
replicas of a service, balanced per stream with gRPC round_robin."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from voxmesh.testing.servers import free_port, wait_for_grpc_health, wait_for_port

MODULES = {
    "stt": "voxmesh_stt",
    "llm": "voxmesh_llm",
    "tts": "voxmesh_tts",
    "orchestrator": "voxmesh_orchestrator",
    "edge": "voxmesh_edge",
}


@dataclass
class Proc:
    name: str
    module: str
    env: dict[str, str]
    log_path: pathlib.Path
    port: int
    metrics_port: int
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(wait)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


# The documented ports of `make run` (replica 0 of each service); tests and
# further replicas take free ports.
DEFAULT_PORTS = {"stt": (50051, 9101), "llm": (50052, 9102), "tts": (50053, 9103), "orchestrator": (50054, 9104), "edge": (8080, 8080)}
START_ORDER = ("llm", "tts", "stt", "orchestrator")


def grpc_target(addresses: list[str]) -> str:
    """One replica: its address. Several: a static list for gRPC's ipv4 resolver;
    the caller's round_robin policy spreads streams over the replicas and skips
    one whose connection broke, so a retried stream lands on a live replica."""
    return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)


@dataclass
class Stack:
    workdir: pathlib.Path
    fixed_ports: bool = False          # the documented ports (make run) or free ones (tests)
    env_extra: dict[str, str] = field(default_factory=dict)
    redis_url: str = ""
    # Processes per service, e.g. {"orchestrator": 2, "stt": 2, "edge": 2}; one by
    # default. Replica 0 is named after the service ("edge"), the others
    # "edge-1", "edge-2", ... (names for kill/restart/logs).
    replicas: dict[str, int] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    _redis: subprocess.Popen | None = None
    _redis_args: list[str] = field(default_factory=list)

    def _port(self, default: int) -> int:
        return default if self.fixed_ports else free_port()

    def names(self, service: str) -> list[str]:
        n = max(1, self.replicas.get(service, 1))
        return [service] + [f"{service}-{i}" for i in range(1, n)]

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.procs['edge'].port}"

    @property
    def edge_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.procs[n].port}" for n in self.names("edge")]

    @property
    def metrics_urls(self) -> dict[str, str]:
        out = {}
        for name, p in self.procs.items():
            out[name] = f"http://127.0.0.1:{p.metrics_port}/metrics"
        return out

    def start(self, timeout: float = 180.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        ports: dict[str, tuple[int, int]] = {}
        for service, (port, mport) in DEFAULT_PORTS.items():
            for i, name in enumerate(self.names(service)):
                p = self._port(port) if i == 0 else free_port()
                # The edge serves /metrics on its HTTP port.
                ports[name] = (p, p) if service == "edge" else (p, self._port(mport) if i == 0 else free_port())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env_extra}
        addrs = {s: [f"127.0.0.1:{ports[n][0]}" for n in self.names(s)] for s in DEFAULT_PORTS}
        # One secret for every edge, so a resume token from one edge is honoured
        # by the others (and by a restarted edge).
        secret = self.env_extra.get("VOXMESH_EDGE_TOKEN_SECRET") or secrets.token_hex(32)
        common = {
            "VOXMESH_ORCHESTRATOR_REDIS_URL": self.redis_url,
            "VOXMESH_ORCHESTRATOR_LLM_TARGETS": ",".join(addrs["llm"]),
            "VOXMESH_EDGE_STT_TARGET": grpc_target(addrs["stt"]), "VOXMESH_EDGE_TTS_TARGET": grpc_target(addrs["tts"]),
            "VOXMESH_EDGE_ORCHESTRATOR_TARGET": grpc_target(addrs["orchestrator"]), "VOXMESH_EDGE_REDIS_URL": self.redis_url,
            "VOXMESH_EDGE_TOKEN_SECRET": secret,
            "VOXMESH_EDGE_MEMBERS": ",".join(f"edge-{i}={a}" for i, a in enumerate(addrs["edge"])),
        }
        for service, module in MODULES.items():
            prefix = "VOXMESH_" + service.upper()
            for i, name in enumerate(self.names(service)):
                own = {f"{prefix}_PORT": str(ports[name][0]), f"{prefix}_POD_NAME": f"{service}-{i}"}
                if service != "edge":
                    own[f"{prefix}_METRICS_PORT"] = str(ports[name][1])
                penv = {**env, **{k: v for k, v in {**common, **own}.items() if k not in self.env_extra}}
                self.procs[name] = Proc(name, module, penv, self.workdir / f"{name}.log", *ports[name])
        # The models load in parallel; the edges come last so no call lands early.
        backends = [n for s in START_ORDER for n in self.names(s)]
        for name in backends:
            self.procs[name].start()
        deadline = time.monotonic() + timeout
        for name in backends:
            p = self.procs[name]
            wait_for_grpc_health(f"127.0.0.1:{p.port}", timeout=max(1.0, deadline - time.monotonic()), proc=p.popen)
        for name in self.names("edge"):
            self.procs[name].start()
        for name in self.names("edge"):
            p = self.procs[name]
            wait_for_port(p.port, timeout=max(1.0, deadline - time.monotonic()), proc=p.popen)

    def _start_redis(self) -> None:
        if self.redis_url:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server, or `make run` does it)")
        port = self._port(6379)
        data = self.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # AOF with fsync every second: a crash or restart loses at most the last
        # second of writes, and committed turns survive (tests/fault).
        self._redis_args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                            "--appendfsync", "everysec", "--save", "", "--protected-mode", "no"]
        self._spawn_redis()
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _spawn_redis(self) -> None:
        log = open(self.workdir / "redis.log", "ab")
        self._redis = subprocess.Popen(self._redis_args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(int(self._redis_args[2]), proc=self._redis)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one process (a replica name, or "redis") with `sig`, and wait for it."""
        if name == "redis":
            if self._redis is not None and self._redis.poll() is None:
                self._redis.send_signal(sig)
                self._redis.wait(15)
            return
        self.procs[name].stop(sig)

    def restart(self, name: str, timeout: float = 60.0) -> None:
        if name == "redis":
            self.kill("redis", signal.SIGTERM)
            self._spawn_redis()
            return
        p = self.procs[name]
        p.stop()
        p.start()
        if name.split("-")[0] == "edge":
            wait_for_port(p.port, timeout=timeout, proc=p.popen)
        else:
            wait_for_grpc_health(f"127.0.0.1:{p.port}", timeout=timeout, proc=p.popen)

    def alive(self, name: str) -> bool:
        if name == "redis":
            return self._redis is not None and self._redis.poll() is None
        p = self.procs[name].popen
        return p is not None and p.poll() is None

    def stop(self) -> None:
        for service in ("edge", "orchestrator", "stt", "tts", "llm"):
            for name in self.names(service):
                if name in self.procs:
                    with contextlib.suppress(Exception):
                        self.procs[name].stop(wait=10)
        if self._redis is not None and self._redis.poll() is None:
            self._redis.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._redis.wait(5)

    def logs(self, name: str, tail: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""
