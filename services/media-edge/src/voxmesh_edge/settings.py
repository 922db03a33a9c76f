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
    # The sessions' stt streams share one TranscribeMany call per stt replica
    # (voxmesh_edge.sttmux), each new stream on the replica with the fewest of
    # this process's streams. A call's message carries what its streams
    # gathered in this window (from the first chunk on): up to this much later
    # at stt, for ~3-10x fewer gRPC messages. 0 = each chunk at once.
    stt_batch_ms: float = 10.0
    # How often a stt target that is a name (the chart's headless Service) is
    # resolved again to see replicas come and go.
    stt_resolve_s: float = 5.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    agent: str = ""                    # agent config name sent to the orchestrator ("" = its default)
    max_sdp_bytes: int = 64 * 1024
    max_sessions: int = 200
    drain_grace_s: float = 30.0
    # A drain moves a client between turns when it can. For the last this-many
    # seconds of the grace (at most half of it) it also moves one whose agent is
    # still speaking, as soon as the user is not mid-utterance (the next edge
    # replays the unheard rest of the reply). Only the grace's end moves a client
    # mid-utterance, and that loses the words not yet transcribed.
    drain_mid_reply_s: float = 5.0
    # Resume tokens (voxmesh_edge.resume): HMAC secret shared by every edge (a
    # Kubernetes Secret in the chart); empty = a random per-process secret, so
    # a token only works on the edge that issued it. Tokens live as long as a
    # session's data in Redis by default.
    token_secret: str = ""
    token_ttl_s: float = 24 * 3600
    # Playback progress is reported at most this often per clause.
    playback_report_ms: int = 100
    # Fade applied when playout pauses, resumes or is flushed (no clicks).
    fade_ms: int = 8
    # Barge-in onset at the edge (voxmesh_edge.onset): while agent audio is
    # going out, sustained speech-level energy in the caller's audio that is not
    # the agent's own echo pauses the playout at once, without waiting for
    # stt's SpeechStarted (which still opens the turn and drives the
    # orchestrator's confirm/resume). False = only stt's onset pauses.
    local_onset: bool = True
    # Energy needed: above this level (and 12 dB over the noise floor) ...
    local_onset_dbfs: float = -42.0
    # ... for this long (clicks and knocks are shorter).
    local_onset_min_ms: int = 30
    # A local pause that stt does not confirm with a SpeechStarted (of speech
    # that is not echo) within this time resumes where it stopped. stt reports
    # an onset ~60-150 ms after it, more when it is loaded.
    local_onset_confirm_ms: int = 600

    # ---- session routing (docs/capacity.md, "Session routing") ----
    # This edge's member name: the StatefulSet pod name in a cluster. The ring
    # hashes names, not addresses, so a restarted pod keeps its keys.
    pod_name: str = "edge-0"
    # How long a new session waits for the agent's turn settings before it
    # opens its stt stream with the stt defaults (audio is queued, not lost).
    config_wait_s: float = 2.0
    # "static": the members below (empty = this edge alone at advertise_host:port,
    # so one local edge needs no configuration); "kubernetes": the ready and
    # draining endpoints of `service_name` from its EndpointSlices.
    membership: str = "static"
    members: tuple[str, ...] = ()      # name=host:port,... (static); must include pod_name
    advertise_host: str = "127.0.0.1"  # where peers reach this edge's HTTP port (static, no members)
    service_name: str = "media-edge"   # headless Service whose EndpointSlices list the edges
    namespace: str = ""                # "" = the pod's own namespace (service account)
    service_port_name: str = "http"    # EndpointSlice port forwarded signaling goes to
    # Owner record lease in Redis, refreshed every owner_refresh_s (0 = ttl/3).
    # A crashed edge's sessions can be taken over by a reconnect once their
    # lease ran out (at once, when the edge has left the membership).
    owner_ttl_s: float = 30.0
    owner_refresh_s: float = 0.0
    # Bounded-load placement: no edge gets a new session while it holds more than
    # max(ceil(mean), factor x mean) of the live sessions (Ring.assign).
    balance_factor: float = 1.05
    # Forwarding signaling to the owner edge. A peer that does not connect within
    # the connect timeout is skipped for new sessions for suspect_s.
    forward_timeout_s: float = 10.0
    forward_connect_timeout_s: float = 1.0
    suspect_s: float = 5.0
    # When set, forwarded requests must carry it (X-Voxmesh-Forward-Token), so a
    # client cannot pose as a peer edge.
    forward_secret: str = ""
    redis_timeout_s: float = 2.0

    # ---- worker processes (voxmesh_edge.workers) ----
    # Edge processes per pod (one core each). >1: a supervisor runs them; each is
    # a ring member named {pod_name}.w{i}, shares `port` (SO_REUSEPORT) and also
    # listens on port+1+i, where peers forward its sessions' signaling. Every
    # pod must run the same number.
    workers: int = 1
    worker_index: int = -1             # set by the supervisor for each worker

    # ---- media ----
    # UDP ports for ICE host candidates, inclusive (0, 0 = any ephemeral port).
    # A cluster opens this range in its firewall / hostNetwork node; each
    # session takes one port per ICE host address.
    ice_port_min: int = 0
    ice_port_max: int = 0
    # The media fast path (voxmesh_edge.media; docs/capacity.md "Edge capacity"):
    # inline Opus encode/decode, no per-frame thread handoffs, one playout clock
    # per process. False = stock aiortc (a decoder thread per session, every
    # encode in the executor); kept for comparison and as a way out.
    fast_media: bool = True
    # Outgoing agent audio: mono Opus at this bitrate. "audio" (CELT) costs about
    # a third of the CPU of "voip" (SILK/hybrid) at 32 kb/s; "voip" is better
    # below ~24 kb/s. Complexity 0-10 trades encoder CPU for quality. Measured
    # on Piper speech at 32 kb/s (bench/codec/codec_bench.py: us per 20 ms
    # frame, wideband PESQ as the mean of 12 encodings): 0: 48 us, 4.11;
    # 2-4: 68-73 us, 4.07-4.08; 5-6: 95 us, 4.20 (the pitch pre-filter);
    # 7-10: ~355 us, 4.52 (speech goes to SILK/hybrid). 0 halves the encoder,
    # the edge's largest single cost while the agent talks, for -0.09 PESQ.
    opus_bitrate: int = 32000
    opus_application: str = "audio"
    opus_complexity: int = 0
    # Incoming audio waits at most this many frames (x 20 ms) for a missing
    # packet before concealing it; in-order packets are never held.
    reorder_frames: int = 2
    # Incoming audio is handed to the session (and to stt) in chunks this long
    # (a multiple of 20 ms): each hand-on costs a wake-up and a gRPC message
    # whatever its length, so 40 ms halves that cost for 10 ms more delay on
    # average. 20 = every frame at once.
    inbound_chunk_ms: int = 40
    # While the caller is talking (a packet's energy over the noise floor) the
    # chunks grow to this; the first quiet packet hands on all that is pending,
    # so the end of a turn is not delayed. Measured at 120: 58 % fewer messages
    # to stt, -5 % edge CPU, audio inside speech 80 ms later at stt (and the
    # interims the orchestrator prefetches on with it): off by default.
    # inbound_chunk_ms (or less) = off.
    inbound_voiced_chunk_ms: int = 40
    # Asked of the caller in our answer (a=ptime): audio per packet it sends.
    # Browsers follow it; 40 ms halves the inbound packet rate (and its cost) for
    # no delay beyond inbound_chunk_ms. 0 = don't ask (callers send 20 ms).
    inbound_ptime_ms: int = 40
    # Asked of the caller in our answer (usedtx=1 in the Opus fmtp, fast receive
    # path only): no packets while its user is silent but one per ~400 ms
    # (browsers); the receiver fills the timestamp gaps with silence for stt.
    inbound_dtx: bool = True
    # Asked of the caller in our answer (maxplaybackrate in the Opus fmtp): its
    # audio only reaches stt at 16 kHz, so a browser encodes wideband (SILK),
    # which decodes in ~55 % of the time of fullband hybrid. 0 = don't ask.
    inbound_max_playback_rate: int = 16000
    # A silent caller's DTX gap goes to stt as silence in real time (a turn ends
    # on silence stt has received), ~40-60 ms behind the caller's clock, in
    # inbound_chunk_ms chunks while a user turn is open at stt (at most
    # inbound_dtx_fine_ms into the gap: more than stt's longest end-of-turn wait,
    # max_silence_ms 2000) and in inbound_dtx_chunk_ms chunks otherwise, when
    # only stt's clock needs it.
    inbound_dtx_fine_ms: int = 2500
    inbound_dtx_chunk_ms: int = 400
    # Agent audio per packet we send, at most (20, 40 or 60): a packet leaves
    # when its first 20 ms are due and carries the audio after it that tts has
    # already delivered, so 40 adds no delay (first audio included) and halves
    # the per-packet cost (wake-up, RTP, SRTP, sendto) while the agent talks;
    # what it costs is that a barge-in cannot recall the <= 20 ms sent ahead.
    # Silence and DTX go in 20 ms frames.
    playout_ptime_ms: int = 40
    # Opus DTX while the agent is silent (fast path): after the encoder's decay,
    # one DTX packet (the TOC byte alone) and then one every
    # playout_dtx_interval_ms instead of a packet every 20 ms; RTP timestamps
    # run on across the gap, sequence numbers stay contiguous and the first
    # packet of each talkspurt carries the marker bit. The agent is silent most
    # of a call, so most of the outbound packets (and their per-packet cost)
    # go. False = a cached silence packet every 20 ms.
    playout_dtx: bool = True
    playout_dtx_interval_ms: int = 400
