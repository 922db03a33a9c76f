"""The whole system as local processes: Redis and the five services with the
CPU defaults. `voxmesh up` (and so `make run`) uses it, and so do the
end-to-end and fault tests, so what a newcomer runs is what CI tests."""

from __future__ import annotations

import contextlib
import os
import pathlib
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


@dataclass
class Stack:
    workdir: pathlib.Path
    fixed_ports: bool = False          # the documented ports (make run) or free ones (tests)
    env_extra: dict[str, str] = field(default_factory=dict)
    redis_url: str = ""
    procs: dict[str, Proc] = field(default_factory=dict)
    _redis: subprocess.Popen | None = None

    def _port(self, default: int) -> int:
        return default if self.fixed_ports else free_port()

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.procs['edge'].port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        out = {}
        for name, p in self.procs.items():
            out[name] = f"http://127.0.0.1:{p.metrics_port}/metrics"
        return out

    def start(self, timeout: float = 180.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        ports = {n: (self._port(d), self._port(m)) for n, d, m in
                 [("stt", 50051, 9101), ("llm", 50052, 9102), ("tts", 50053, 9103), ("orchestrator", 50054, 9104), ("edge", 8080, 8080)]}
        ports["edge"] = (ports["edge"][0], ports["edge"][0])  # the edge serves /metrics on its HTTP port
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env_extra}
        addr = {n: f"127.0.0.1:{p[0]}" for n, p in ports.items()}
        common = {
            "VOXMESH_STT_PORT": str(ports["stt"][0]), "VOXMESH_STT_METRICS_PORT": str(ports["stt"][1]),
            "VOXMESH_LLM_PORT": str(ports["llm"][0]), "VOXMESH_LLM_METRICS_PORT": str(ports["llm"][1]),
            "VOXMESH_TTS_PORT": str(ports["tts"][0]), "VOXMESH_TTS_METRICS_PORT": str(ports["tts"][1]),
            "VOXMESH_ORCHESTRATOR_PORT": str(ports["orchestrator"][0]),
            "VOXMESH_ORCHESTRATOR_METRICS_PORT": str(ports["orchestrator"][1]),
            "VOXMESH_ORCHESTRATOR_REDIS_URL": self.redis_url,
            "VOXMESH_ORCHESTRATOR_LLM_TARGETS": addr["llm"],
            "VOXMESH_EDGE_PORT": str(ports["edge"][0]),
            "VOXMESH_EDGE_STT_TARGET": addr["stt"], "VOXMESH_EDGE_TTS_TARGET": addr["tts"],
            "VOXMESH_EDGE_ORCHESTRATOR_TARGET": addr["orchestrator"], "VOXMESH_EDGE_REDIS_URL": self.redis_url,
        }
        for name, module in MODULES.items():
            penv = {**env, **{k: v for k, v in common.items() if k not in self.env_extra}}
            self.procs[name] = Proc(name, module, penv, self.workdir / f"{name}.log", *ports[name])
        # The models load in parallel; the edge comes last so no call lands early.
        for name in ("llm", "tts", "stt", "orchestrator"):
            self.procs[name].start()
        deadline = time.monotonic() + timeout
        for name in ("llm", "tts", "stt", "orchestrator"):
            p = self.procs[name]
            wait_for_grpc_health(f"127.0.0.1:{p.port}", timeout=max(1.0, deadline - time.monotonic()), proc=p.popen)
        self.procs["edge"].start()
        wait_for_port(self.procs["edge"].port, timeout=max(1.0, deadline - time.monotonic()), proc=self.procs["edge"].popen)

    def _start_redis(self) -> None:
        if self.redis_url:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server, or `make run` does it)")
        port = self._port(6379)
        data = self.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")
        self._redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_for_port(port, proc=self._redis)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.procs[name].stop(sig)

    def restart(self, name: str) -> None:
        p = self.procs[name]
        p.stop()
        p.start()
        if name == "edge":
            wait_for_port(p.port, proc=p.popen)
        else:
            wait_for_grpc_health(f"127.0.0.1:{p.port}", proc=p.popen)

    def stop(self) -> None:
        for name in ("edge", "orchestrator", "stt", "tts", "llm"):
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
