from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EdgeSettings:
    """Read from VOXMESH_EDGE_<FIELD>."""

    host: str = "0.0.0.0"
    port: int = 8080
    # Addresses offered as ICE host candidates (and bound for media). aioice
    # offers no loopback address by default; a cluster sets the node address.
    # Empty: every non-loopback interface (aioice's default).
    ice_hosts: tuple[str, ...] = ("127.0.0.1",)
    turn_url: str = ""                 # turn:host:port?transport=udp
    turn_username: str = ""
    turn_password: str = ""
    stt_target: str = "127.0.0.1:50051"
    tts_target: str = "127.0.0.1:50053"
    orchestrator_target: str = "127.0.0.1:50054"
    redis_url: str = "redis://127.0.0.1:6379/0"
    agent: str = ""                    # agent config name sent to the orchestrator ("" = its default)
    max_sdp_bytes: int = 64 * 1024
    max_sessions: int = 200
    drain_grace_s: float = 30.0
    # Playback progress is reported at most this often per clause.
    playback_report_ms: int = 100
    # Fade applied when playout pauses, resumes or is flushed (no clicks).
    fade_ms: int = 8
    pod_name: str = "edge-0"
