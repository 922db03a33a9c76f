"""The metrics contract: every voxmesh metric name, type, labels and buckets in
one place. Services fetch the ones they record with `metric(name)`; a metric is
registered (and so exported on /metrics) only by the processes that use it.

Names end in `_seconds` or `_total` (or name a current level); labels are
bounded: never a session id.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Latency buckets sized for conversational budgets: tens of ms to a few seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Spec:
    kind: type
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    # Gauges only, when a service runs several processes (prometheus_client
    # multiprocess mode): how their values combine. "livesum": one series, the
    # sum over the live processes.
    multiprocess_mode: str = "all"


CATALOG: dict[str, Spec] = {
    # media-edge
    "voxmesh_ttfa_seconds": Spec(Histogram, "User end of speech to the first agent audio frame sent"),
    "voxmesh_bargein_stop_seconds": Spec(Histogram, "User speech start to agent audio stopped"),
    "voxmesh_active_sessions": Spec(Gauge, "Sessions with a live connection on this process (pod, with worker processes)", multiprocess_mode="livesum"),
    "voxmesh_sessions_total": Spec(Counter, "Sessions created, by outcome", ("outcome",)),
    "voxmesh_http_requests_total": Spec(Counter, "Signaling requests by route and status code", ("route", "code")),
    "voxmesh_playout_frames_total": Spec(Counter, "Agent audio frames sent to clients", ("kind",)),
    "voxmesh_playout_late_frames_total": Spec(Counter, "Playout ticks that ran later than one frame"),
    "voxmesh_edge_forwards_total": Spec(Counter, "Signaling requests forwarded to the session's owner edge, by outcome (ok, unreachable)", ("outcome",)),
    "voxmesh_inbound_frames_lost_total": Spec(Counter, "Caller audio packets the edge gave up on (lost: concealed after the reorder wait; late: arrived after that)", ("reason",)),
    "voxmesh_inbound_dtx_seconds_total": Spec(Counter, "Caller silence the edge handed to stt for Opus DTX gaps (no packets while the user was silent), by when: live (in real time, ahead of the next packet) or at_packet (when the next packet came)", ("fill",)),
    "voxmesh_edge_stt_messages_total": Spec(Counter, "TranscribeMany messages the edge sent to stt (each carries its sessions' audio of one batch window)"),
    "voxmesh_edge_stt_parts_total": Spec(Counter, "Sessions' audio parts those messages carried (parts / messages: the batching)"),
    "voxmesh_frame_lateness_seconds": Spec(Histogram, "How late a playout tick ran", (), (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.08, 0.16)),
    # stt
    "voxmesh_stt_active_streams": Spec(Gauge, "stt streams open on this process (Transcribe calls and TranscribeMany streams)"),
    "voxmesh_stt_final_seconds": Spec(Histogram, "End of speech to final transcript"),
    "voxmesh_stt_interim_seconds": Spec(Histogram, "Speech onset to first interim transcript"),
    "voxmesh_stt_decode_seconds": Spec(Histogram, "Model time of one ASR decode", ("kind",)),
    "voxmesh_eou_delay_seconds": Spec(Histogram, "End of speech to end-of-turn decision"),
    "voxmesh_eou_total": Spec(Counter, "End-of-turn decisions by reason", ("reason",)),
    "voxmesh_stt_audio_seconds_total": Spec(Counter, "Seconds of audio received"),
    "voxmesh_eou_suspect_total": Spec(Counter, "End-of-turn decisions that look wrong: false (the speaker went on right after) or late (held to the maximum wait)", ("kind",)),
    # llm
    "voxmesh_llm_ttft_seconds": Spec(Histogram, "Request received to first generated token"),
    "voxmesh_llm_queue_depth": Spec(Gauge, "Generate requests waiting for the engine"),
    "voxmesh_llm_active_requests": Spec(Gauge, "Generate requests being decoded"),
    "voxmesh_llm_requests_total": Spec(Counter, "Generate requests by outcome", ("outcome",)),
    "voxmesh_llm_tokens_total": Spec(Counter, "Tokens generated"),
    "voxmesh_llm_cancel_seconds": Spec(Histogram, "Caller cancel to generation stopped"),
    # tts
    "voxmesh_tts_first_chunk_seconds": Spec(Histogram, "Clause received to its first audio chunk"),
    "voxmesh_tts_active_streams": Spec(Gauge, "Synthesize streams open on this process"),
    "voxmesh_tts_audio_seconds_total": Spec(Counter, "Seconds of audio synthesized"),
    "voxmesh_tts_realtime_factor": Spec(Histogram, "Synthesis time over audio duration per clause", (), (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)),
    # orchestrator
    "voxmesh_turns_total": Spec(Counter, "Committed user turns by outcome", ("outcome",)),
    "voxmesh_first_clause_seconds": Spec(Histogram, "Committed user turn to first clause sent to the edge"),
    "voxmesh_speculative_replies_total": Spec(Counter, "Replies generated before the turn commit, by outcome", ("outcome",)),
    "voxmesh_tool_calls_total": Spec(Counter, "Tool calls by tool and outcome", ("tool", "outcome")),
    "voxmesh_interruptions_total": Spec(Counter, "Barge-ins by kind", ("kind",)),
    "voxmesh_session_recoveries_total": Spec(Counter, "Sessions resumed after a lost component", ("component",)),
    "voxmesh_recovery_seconds": Spec(Histogram, "Component loss to the session working again", ("component",)),
    "voxmesh_orchestrator_sessions": Spec(Gauge, "Converse streams open on this process"),
    # every service
    "voxmesh_errors_total": Spec(Counter, "Errors answered to callers or logged, by where", ("where",)),
}

_lock = threading.Lock()

# Which service records which metrics: the CATALOG's sections, in order.
_SECTIONS = [
    ("media-edge", "voxmesh_ttfa_seconds"),
    ("stt", "voxmesh_stt_active_streams"),
    ("llm", "voxmesh_llm_ttft_seconds"),
    ("tts", "voxmesh_tts_first_chunk_seconds"),
    ("orchestrator", "voxmesh_turns_total"),
    ("all", "voxmesh_errors_total"),
]
# Label values every dashboard and alert expects to see from the start, so a
# rate() over them is 0 rather than absent before the first event.
_KNOWN_LABELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "voxmesh_interruptions_total": (("confirmed",), ("false",), ("backchannel",), ("echo",), ("edge_false",)),
    "voxmesh_session_recoveries_total": (("orchestrator",), ("stt",), ("edge",)),
    "voxmesh_recovery_seconds": (("orchestrator",), ("stt",), ("edge",)),
}


def service_metrics(service: str) -> list[str]:
    names = list(CATALOG)
    starts = [names.index(first) for _, first in _SECTIONS] + [len(names)]
    out: list[str] = []
    for (owner, _), a, b in zip(_SECTIONS, starts, starts[1:]):
        if owner in (service, "all"):
            out += names[a:b]
    if service == "media-edge":  # the edge counts the recoveries it completes and the echoes it drops
        out += ["voxmesh_interruptions_total", "voxmesh_session_recoveries_total", "voxmesh_recovery_seconds"]
    return out


def init_service_metrics(service: str) -> None:
    """Create a service's metrics at start, so /metrics shows every series it
    will ever have (at zero) before the first call: scrapes, rate() and the
    chart's checks see them from the beginning."""
    for name in service_metrics(service):
        collector = metric(name)
        for values in _KNOWN_LABELS.get(name, ()):
            collector.labels(*values)


@functools.cache
def _create(name: str):
    spec = CATALOG[name]
    if spec.kind is Histogram:
        return Histogram(name, spec.help, spec.labels, buckets=spec.buckets)
    if spec.kind is Gauge:
        return Gauge(name, spec.help, spec.labels, multiprocess_mode=spec.multiprocess_mode)
    return spec.kind(name, spec.help, spec.labels)


def metric(name: str):
    """The process-wide collector for `name` (created on first use)."""
    if name not in CATALOG:
        raise KeyError(f"{name} is not in the metrics contract (voxmesh.core.metrics.CATALOG)")
    with _lock:
        return _create(name)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on its own port (a daemon thread, off the event loop)."""
    if port:
        start_http_server(port, addr=addr)
