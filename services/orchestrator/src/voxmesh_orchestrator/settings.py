from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OrchestratorSettings:
    """Read from VOXMESH_ORCHESTRATOR_<FIELD>."""

    port: int = 50054
    metrics_port: int = 9104
    redis_url: str = "redis://127.0.0.1:6379/0"
    # llm replicas as host:port; a session's calls stay on one (prefix-cache affinity).
    llm_targets: tuple[str, ...] = ("127.0.0.1:50052",)
    # "static": llm_targets as given. "kubernetes": the ready pods of the llm
    # Service's EndpointSlices (watched), so affinity holds per replica pod.
    llm_membership: str = "static"
    llm_service: str = ""              # the llm Service name (kubernetes membership)
    llm_port_name: str = "grpc"        # its port name in the EndpointSlices
    namespace: str = ""                # "" = this pod's namespace
    # Agent config: a name of a packaged agent ("support") or a path to a YAML file.
    agent: str = "support"
    # Seconds a session's keys live after its last write.
    session_ttl_s: int = 24 * 3600
    drain_grace_s: float = 10.0
    # This replica's name (the pod name in a cluster), recorded in the session's
    # meta while it serves it: for operators and the fault tests.
    pod_name: str = ""

    def __post_init__(self) -> None:
        if not self.pod_name:
            import socket

            object.__setattr__(self, "pod_name", socket.gethostname())
