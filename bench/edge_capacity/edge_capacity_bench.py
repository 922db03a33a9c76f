"""Edge capacity: N concurrent WebRTC sessions against ONE media-edge process.

    python bench/edge_capacity/edge_capacity_bench.py --sessions 10,20,30 --seconds 20

What runs (all on this machine):
- a real redis-server and the real edge (`python -m voxmesh_edge`, one process,
  its default settings except the upstream targets);
- gRPC TEST DOUBLES of stt, tts and the orchestrator, in this process
  (bench/edge_capacity/doubles.py): the agent speaks ~half the time, stt hears
  everything and answers nothing;
- the callers, in separate processes (bench/edge_capacity/clients.py): real
  aiortc PeerConnections playing speech on a loop and recording the reply,
  which they receive on the edge's own fast receive path (16 kHz decode in the
  loop, no decoder thread) so that 60+ of them keep time on one core as
  browsers on their own machines do, and they send RTCP at a browser's audio
  cadence (~5 s, not aiortc's 1 s); --caller-stock-receive gives them
  aiortc's stock receiver (a decoder thread each) and 1 s RTCP, under which they fall
  behind and send in bursts, and the edge then merges more of its stt
  messages (fewer, bigger) than with steady callers.

The callers use the same cores as the edge, so the figure that matters is per
core of EDGE CPU: the edge process's utime+stime (/proc) over the measured
window. Printed per N:
- edge CPU (cores) and sessions per core of edge CPU;
- playout lateness p50/p99 (the edge's voxmesh_frame_lateness_seconds, every
  packet sent observed; DTX ticks that send nothing are not) and late ticks
  (> 20 ms late);
- receive-path delay p50/p99: the caller's packet with a marker frame leaves
  -> the stt double receives that frame's 16 kHz PCM (network, SRTP, jitter or
  reorder buffer, decode, resample, chunking, gRPC: everything the edge adds
  between the caller's packet and speech recognition);
- drops: inbound audio lost before stt (from the sample distance between
  markers), outbound packets lost at the callers, late playout ticks; as a share
  of all frames both ways.

Callers talk all the time by default. With --turn-taking, each alternates
--caller-talk-s of speech with --caller-silent-s of silence (defaults 3 s and
3 s, from a random point of the cycle per caller) and sends the silence as
Opus DTX when the answer asks for it (usedtx=1, the edge's default), RTP
timestamps running on (clients.TalkSchedule): --caller-dtx toc (default), one
TOC-only packet when it starts and one every 400 ms; webrtc, what libopus and
libwebrtc send (clients.webrtc_silence). Printed for that: the callers' packets per
session-second (speech / DTX / silence), and what stt received per
session-second of the window: audio (s; 1.0 when the edge fills the DTX gaps
with silence in time), its digital-silence share and messages.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from doubles import STT_RATE, TTS_RATE, serve_doubles  # noqa: E402

from voxmesh.testing.servers import free_port, redis_server, stop_process, wait_for_port  # noqa: E402

RATE = 48000
FRAME = 960
MARKER_EVERY = 100  # frames: a marker every 2 s
TICK = os.sysconf("SC_CLK_TCK")
TEXT = ("Hello, I would like to check on my order. The number is four two one nine, "
        "and I placed it last Tuesday. Could you tell me when it will arrive?")


def make_audio(workdir: pathlib.Path, cache: pathlib.Path | None = None) -> tuple[pathlib.Path, np.ndarray]:
    """The callers' loop (48 kHz, 4 s of speech at -26 dBFS with a -4 dBFS
    1 kHz marker frame every 2 s, after 60 ms of silence), and the tts double's
    speech (22.05 kHz). With `cache`, the espeak-ng WAVs are taken from there when
    present (and stored there otherwise), so the bench runs on a box without espeak-ng."""
    from voxmesh.testing.speech import read_pcm16, say_to_wav

    wavs = []
    for name, rate in (("speech48.wav", RATE), ("speech22.wav", TTS_RATE)):
        cached = cache / name if cache else None
        if cached is not None and cached.exists():
            wavs.append(cached)
            continue
        wav = say_to_wav(TEXT, workdir / name, rate=rate)
        if cached is not None:
            cache.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(wav.read_bytes())
        wavs.append(wav)
    wav48, wav22 = wavs
    pcm, _ = read_pcm16(str(wav48))
    pcm = pcm.astype(np.float32)
    pcm *= 10 ** (-26 / 20) * 32768 / max(1.0, float(np.sqrt(np.mean(pcm**2))))
    n = MARKER_EVERY * 2 * FRAME
    loop = np.resize(pcm, n)
    tone = 0.9 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(FRAME) / RATE)
    for start in range(0, n, MARKER_EVERY * FRAME):
        loop[max(0, start - 3 * FRAME) : start] = 0
        loop[start : start + FRAME] = tone
        loop[start + FRAME : start + 3 * FRAME] = 0
    loop_path = workdir / "loop.npy"
    np.save(loop_path, np.clip(loop, -32768, 32767).astype(np.int16))
    (workdir / "loop.npy.json").write_text(json.dumps({"marker_every_frames": MARKER_EVERY}))
    speech22, _ = read_pcm16(str(wav22))
    return loop_path, speech22.astype(np.int16)


def tree(pid: int) -> list[int]:
    """The edge process and its children (worker processes, with VOXMESH_EDGE_WORKERS)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (all threads)
    return total


def core_times() -> dict[int, tuple[int, int]]:
    """(busy, all) clock ticks per core since boot (/proc/stat)."""
    out = {}
    for line in open("/proc/stat"):
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            v = [int(x) for x in fields]
            out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))  # all but idle and iowait
    return out


def busy_pct(before: dict, after: dict, cpus: set[int] | None) -> dict[int, float]:
    return {c: round(100 * (after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]), 1)
            for c in sorted(cpus or after)}


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """(user s, system s) per thread name of the edge's processes; a process's
    main thread (the event loop) is "loop", apart from its other Python threads
    (gRPC's completion-queue poller among them), which share its name."""
    out: dict[str, tuple[float, float]] = {}
    tasks = []
    for p in tree(pid):
        try:
            tasks += [(f"/proc/{p}/task/{t}", t == str(p)) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
    for task, main in tasks:
        try:
            stat = open(f"{task}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        name = "loop" if main else "".join(c for c in name if not c.isdigit()).rstrip("_-") or name  # decoder threads by kind
        fields = stat.rsplit(")", 1)[1].split()
        u, s_ = out.get(name, (0.0, 0.0))
        out[name] = (u + int(fields[11]) / TICK, s_ + int(fields[12]) / TICK)
    return out


def run_delay(pid: int) -> tuple[float, float]:
    """Seconds the process's threads spent runnable but waiting for a CPU
    (/proc/<pid>/task/*/schedstat, 2nd field), (event loop threads, all threads):
    on a shared box, how much of the edge's lateness is the box's, not the edge's."""
    loop = total = 0
    for p in tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                wait = int(open(f"/proc/{p}/task/{task}/schedstat").read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
            total += wait
            loop += wait if task == str(p) else 0
    return loop / 1e9, total / 1e9


def cpu_split(before: dict, after: dict, wall: float) -> dict[str, str]:
    """Share of a core per thread kind over the window: 'user+sys'."""
    out = {}
    for name, (u, s) in sorted(after.items()):
        u0, s0 = before.get(name, (0.0, 0.0))
        du, ds = (u - u0) / wall, (s - s0) / wall
        if du + ds >= 0.005:
            out[name] = f"{du:.3f}+{ds:.3f}"
    return out


async def scrape(url: str) -> dict:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            key = sample.name + (json.dumps(sample.labels, sort_keys=True) if sample.labels else "")
            out[key] = sample.value
    return out


def histogram_quantile(before: dict, after: dict, name: str, q: float) -> float | None:
    buckets = []
    for key, value in after.items():
        if key.startswith(name + "_bucket"):
            le = json.loads(key[len(name + "_bucket"):])["le"]
            buckets.append((float("inf") if le == "+Inf" else float(le), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(1e-12, c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


# Where the edge's time goes, from py-spy's collapsed stacks: each sample goes to
# the first category whose marker is in its stack (order matters).
CATEGORIES = [
    ("opus encode", ["Encoder.encode (voxmesh_edge/opus"]),
    ("opus decode", ["Decoder.decode (voxmesh_edge/opus", "Decoder.conceal"]),
    ("SRTP protect/unprotect", ["Session.protect", "Session.unprotect", "Session.__process"]),
    ("UDP send (sendto)", ["StunProtocol.send_data"]),
    ("gRPC calls (stt, orchestrator, tts streams)", ["grpc/", "voxmesh_edge/sttmux"]),
    ("inbound: DTLS/RTP receive, reorder, frame build", ["RTCDtlsTransport._recv_next", "RTCRtpReceiver", "InlineDecoder",
                                                         "DirectRtp", "FastReceiver", "RtpHeader"]),
    ("playout: pacing, queue, echo reference, metrics", ["PacedOpusTrack", "PlayoutTrack", "Playout.", "EchoGuard", "Ticker"]),
    ("outbound: RTP packetize and send", ["RTCRtpSender._run_rtp", "FastSender._run_rtp"]),
    ("session: inbound audio to the stt queue", ["EdgeSession._read_track"]),
    ("session: tts audio, resample, playback reports", ["EdgeSession._synthesize", "_on_progress", "_on_command"]),
    ("SCTP data channel, RTCP, ICE", ["rtcsctptransport", "_run_rtcp", "aioice/ice.py"]),
]


def profile_breakdown(path: pathlib.Path) -> list[tuple[str, float]]:
    """Shares of the event loop thread's samples. Other threads are left out:
    py-spy counts gRPC's poller thread as busy while it waits in the C core
    (a third of all samples, for ~3 % of a core); their CPU is in
    `edge_threads_user+sys`."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or "MainThread" not in stack.split(";", 1)[0]:
            continue
        total += int(n)
        name = next((c for c, keys in CATEGORIES if any(k in stack for k in keys)), "event loop (uvloop) and other")
        counts[name] = counts.get(name, 0) + int(n)
    return sorted(((k, 100 * v / max(1, total)) for k, v in counts.items()), key=lambda kv: -kv[1])


def cpu_list(spec: str | None) -> set[int] | None:
    """'0' or '1-7' or '2,4-5' -> {cpus}; None or '' -> no pinning."""
    if not spec:
        return None
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pinned(nice: int, cpus: set[int] | None):
    """preexec_fn for a child: its niceness and, on a box with cores to spare,
    its own cores (the edge on one core, as in a pod with a CPU limit of 1, and
    the callers elsewhere, so the load generator never competes with it)."""
    def apply() -> None:
        os.nice(nice)
        if cpus:
            os.sched_setaffinity(0, cpus)
    return apply


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def stt_totals(stt) -> tuple[int, int, int]:
    """(samples, all-zero samples, audio messages or parts, TranscribeMany
    messages) the stt double has received, all sessions."""
    streams = list(stt.streams.values())
    return (sum(s.samples for s in streams), sum(s.zero_samples for s in streams), sum(s.messages for s in streams),
            stt.batches)


async def run_one(n: int, args, redis_url: str, doubles_port: int, stt, loop_path: pathlib.Path, workdir: pathlib.Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "VOXMESH_LOG_LEVEL": "WARNING",
        "VOXMESH_EDGE_PORT": str(port), "VOXMESH_EDGE_REDIS_URL": redis_url,
        "VOXMESH_EDGE_STT_TARGET": f"127.0.0.1:{doubles_port}", "VOXMESH_EDGE_TTS_TARGET": f"127.0.0.1:{doubles_port}",
        "VOXMESH_EDGE_ORCHESTRATOR_TARGET": f"127.0.0.1:{doubles_port}", "VOXMESH_EDGE_MAX_SESSIONS": "100000",
        **dict(kv.split("=", 1) for kv in args.edge_env),
    }
    log = open(workdir / f"edge-{n}.log", "wb")
    # The edge of a deployment has its cores to itself; on this shared box it runs
    # at a higher priority than the rest (the callers, other users' work) so that
    # its lateness is its own. Its CPU cost does not depend on the priority.
    edge = subprocess.Popen([sys.executable, "-m", "voxmesh_edge"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=pinned(args.edge_nice, cpu_list(args.edge_cpus)))
    clients = []
    try:
        await asyncio.to_thread(wait_for_port, port, timeout=60, proc=edge)
        procs = max(1, min(args.client_procs, n))
        per = [n // procs + (i < n % procs) for i in range(procs)]
        run_s = args.warmup + args.seconds + 1
        for i, k in enumerate(per):
            out = workdir / f"clients-{n}-{i}.json"
            options = {"seed": 1000 * n + i, "fast_receive": not args.caller_stock_receive}
            if args.turn_taking:
                options.update(talk_s=args.caller_talk_s, silent_s=args.caller_silent_s, dtx_style=args.caller_dtx)
            clients.append((subprocess.Popen(
                [sys.executable, str(HERE / "clients.py"), url, str(k), str(args.stagger), str(run_s), str(loop_path), str(out),
                 json.dumps(options)],
                stdout=subprocess.PIPE, stderr=open(workdir / f"clients-{n}-{i}.log", "wb"),
                # The callers are load, not the system under test: on a box where
                # they share the edge's cores, they yield to it (the edge of a real
                # deployment has its cores to itself).
                preexec_fn=pinned(args.client_nice, cpu_list(args.client_cpus)),
            ), out))
        for p, _ in clients:  # all sessions set up
            line = await asyncio.to_thread(p.stdout.readline)
            if not line:
                raise RuntimeError(f"clients failed: see {workdir}")
        await asyncio.sleep(args.warmup)
        m0, c0, t0, th0, rd0 = await scrape(url), cpu_seconds(edge.pid), time.monotonic(), thread_cpu(edge.pid), run_delay(edge.pid)
        k0 = core_times()
        s0 = stt_totals(stt)
        spy = None
        if args.profile:
            # Where the edge's CPU goes (py-spy, sampling; it costs the edge nothing
            # but takes some of the shared cores): collapsed stacks per thread.
            target = max(tree(edge.pid))  # the (last) worker process when there are workers
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(target), "--duration", str(int(args.seconds)),
                                    "--rate", "200", "--threads", "--format", "raw", "--output", str(workdir / f"profile-{n}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(args.seconds)
        m1, c1, t1, th1, rd1 = await scrape(url), cpu_seconds(edge.pid), time.monotonic(), thread_cpu(edge.pid), run_delay(edge.pid)
        k1 = core_times()
        s1 = stt_totals(stt)
        if spy is not None:
            await asyncio.to_thread(spy.wait, 60)
        for p, _ in clients:
            await asyncio.to_thread(p.wait, 120)
        results = [r for _, out in clients for r in json.loads(out.read_text())]
    finally:
        for p, _ in clients:
            if p.poll() is None:
                p.kill()
        stop_process(edge)
    row = analyse(n, results, stt, m0, m1, c1 - c0, t0, t1)
    row["callers"] = f"turns {args.caller_talk_s:g}/{args.caller_silent_s:g} s, DTX {args.caller_dtx}" if args.turn_taking \
        else "continuous"
    row.update(inbound_figures(n, results, m0, m1, s0, s1, t1 - t0))
    row["edge_threads_user+sys"] = cpu_split(th0, th1, t1 - t0)
    row["edge_waiting_for_cpu_pct"] = round(100 * (rd1[1] - rd0[1]) / (t1 - t0), 1)
    row["edge_loop_waiting_for_cpu_pct"] = round(100 * (rd1[0] - rd0[0]) / (t1 - t0), 1)
    # How busy the callers' cores were: near 100 %, the load generator itself
    # falls behind and sends in bursts, and the edge's figures say less.
    row["client_cores_busy_pct"] = busy_pct(k0, k1, cpu_list(args.client_cpus))
    prof = workdir / f"profile-{n}.txt"
    if args.profile and prof.exists():
        row["profile_pct"] = {k: round(v, 1) for k, v in profile_breakdown(prof)}
    return row


def analyse(n, results, stt, m0, m1, cpu, t0, t1) -> dict:
    wall = t1 - t0
    delays, lost_in, frames_in, lost_out, frames_out, gaps = [], 0, 0, 0, 0, 0
    for r in results:
        st = stt.streams.get(r["session_id"])
        sent = dict((int(f), ts) for f, ts in r["marker_times"])  # caller frame of a marker -> its packet left
        if st is not None and st.markers and sent:
            base_off = st.markers[0][1]
            # The first marker the edge delivered is the first one the caller sent
            # after its connection came up; the rest are placed on the caller's
            # clock by their sample offset in the audio stt received (which runs
            # with the caller's clock, DTX gaps filled), on the markers' grid.
            first = next((f for f, ts in sorted(sent.items()) if ts > st.markers[0][0] - 1.0), min(sent))
            prev = None
            for arrival, off in st.markers:
                f = first + MARKER_EVERY * round((off - base_off) / (MARKER_EVERY * STT_RATE // 50))
                if t0 <= arrival <= t1 and f in sent:
                    delays.append(arrival - sent[f])
                    if prev is not None:
                        expect = (f - prev[0]) * STT_RATE // 50
                        lost_in += max(0, round((expect - (off - prev[1])) / (STT_RATE // 50)))
                        frames_in += f - prev[0]
                if t0 <= arrival <= t1:
                    prev = (f, off)
        arr = [a for a in r["arrivals"] if t0 <= a <= t1]
        frames_out += round(wall * 50)
        gaps += sum(1 for a, b in zip(arr, arr[1:]) if b - a > 0.06)
        lost_out += r["packets_lost"] * wall / max(1e-9, r["frames_sent"] * 0.02)  # prorated to the window
    late = m1.get("voxmesh_playout_late_frames_total", 0) - m0.get("voxmesh_playout_late_frames_total", 0)
    ticks = sum(v - m0.get(k, 0) for k, v in m1.items() if k.startswith("voxmesh_playout_frames_total"))
    drops = lost_in + lost_out + late
    total = frames_in + frames_out
    cores = cpu / wall
    return {
        "sessions": n, "edge_cpu_cores": round(cores, 3),
        "sessions_per_core": round(n / cores, 1) if cores > 0 else None,
        "edge_cpu_ms_per_session_s": round(cpu / wall / n * 1000, 2),
        "lateness_p50_ms": _ms(histogram_quantile(m0, m1, "voxmesh_frame_lateness_seconds", 0.50)),
        "lateness_p99_ms": _ms(histogram_quantile(m0, m1, "voxmesh_frame_lateness_seconds", 0.99)),
        "late_ticks": int(late), "ticks": int(ticks),
        "recv_delay_p50_ms": _ms(pct(delays, 50)), "recv_delay_p99_ms": _ms(pct(delays, 99)), "markers": len(delays),
        "inbound_frames_lost": int(lost_in), "outbound_packets_lost": round(lost_out, 1), "client_gaps_over_60ms": gaps,
        "drop_pct": round(100 * drops / max(1, total), 3),
        "connected": sum(1 for r in results if r["state"] == "connected"),
    }


def inbound_figures(n: int, results: list[dict], m0: dict, m1: dict, s0: tuple, s1: tuple, wall: float) -> dict:
    """What the callers sent (packets per session-second over their whole run,
    by kind) and what stt got in the window (per session-second): shows whether
    the callers sent DTX and the edge filled its gaps in time."""
    caller_s = sum(r["frames_sent"] for r in results) * 0.02 or 1.0
    kinds = {k: sum(r.get("packets_sent", {}).get(k, 0) for r in results) for k in ("speech", "dtx", "silence")}
    lost = sum(v - m0.get(k, 0) for k, v in m1.items() if k.startswith("voxmesh_inbound_frames_lost_total"))
    samples, zeros, messages, batches = (b - a for a, b in zip(s0, s1))
    # The edge's own count of the silence it put in DTX gaps, by its `fill` label
    # (where the edge has the metric): seconds per session-second of the window.
    dtx_key = "voxmesh_inbound_dtx_seconds_total"
    dtx = {(json.loads(k[len(dtx_key):]).get("fill", "") if k != dtx_key else ""): round((v - m0.get(k, 0.0)) / wall / n, 3)
           for k, v in m1.items() if k.startswith(dtx_key)}
    return {
        "edge_dtx_s_per_s": dtx or None,
        "dtx_callers": sum(1 for r in results if r.get("dtx")),
        "caller_packets_per_s": {k: round(v / caller_s, 2) for k, v in kinds.items()},
        "caller_rtp_packets_per_s": round(sum(r.get("rtp_packets_sent", 0) for r in results) / caller_s, 2),
        "stt_audio_s_per_s": round(samples / STT_RATE / wall / n, 3),
        "stt_zero_pct": round(100 * zeros / max(1, samples), 1),
        # audio parts per session-second, and the gRPC messages that carried
        # them (the edge batches its sessions' parts, sttmux) per second, all sessions
        "stt_messages_per_s": round(messages / wall / n, 2),
        "stt_grpc_messages_per_s": round(batches / wall),
        "edge_inbound_lost": int(lost),
    }


def _ms(v):
    return None if v is None else round(v * 1000, 1)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="10,20,30", help="comma-separated session counts")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--stagger", type=float, default=0.15, help="seconds between session setups")
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--client-nice", type=int, default=10, help="niceness of the caller processes")
    ap.add_argument("--edge-nice", type=int, default=-5, help="niceness of the edge (negative needs root; 0 if not root)")
    ap.add_argument("--reply-s", type=float, default=3.0, help="agent speech per reply")
    ap.add_argument("--cycle-s", type=float, default=6.0, help="one reply every cycle")
    ap.add_argument("--turn-taking", action="store_true",
                    help="callers alternate --caller-talk-s of speech with --caller-silent-s of silence, sent as Opus DTX "
                         "when the answer asks for it (default: callers talk all the time)")
    ap.add_argument("--caller-talk-s", type=float, default=3.0,
                    help="with --turn-taking: seconds of speech per turn (default 3: a user's turn to an agent)")
    ap.add_argument("--caller-silent-s", type=float, default=3.0,
                    help="with --turn-taking: seconds of silence between turns (default 3: the agent's reply, "
                         "--reply-s, with the callers' speech half the time; not aligned with the agent's replies)")
    ap.add_argument("--caller-dtx", choices=("toc", "webrtc"), default="toc",
                    help="with --turn-taking, the DTX a silent caller sends: toc = a TOC-only packet at the start and "
                         "every 400 ms; webrtc = libopus + libwebrtc's (200 ms of coded silence, then a TOC-only "
                         "packet, and every ~400 ms a coded refresh frame followed by a TOC-only packet)")
    ap.add_argument("--edge-env", action="append", default=[], help="extra VOXMESH_EDGE_X=value for the edge")
    ap.add_argument("--edge-cpus", help="pin the edge (and its workers) to these CPUs, e.g. 0; default: not pinned")
    ap.add_argument("--client-cpus", help="pin the caller processes to these CPUs, e.g. 2-15; default: not pinned")
    ap.add_argument("--caller-stock-receive", action="store_true",
                    help="callers decode the agent's audio with aiortc's stock receiver (a decoder thread each, "
                         "48 kHz stereo) instead of the edge's fast receive path; at ~60 callers on one core the "
                         "stock one falls behind and the callers then send in bursts")
    ap.add_argument("--audio-cache", type=pathlib.Path, help="folder for the espeak-ng WAVs (reused when present)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--profile", action="store_true", help="py-spy the edge during the window (profile-N.txt in the work dir)")
    args = ap.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="edge-capacity-"))
    if args.client_cpus:  # the doubles and Redis (this process and its children) stay off the edge's cores
        os.sched_setaffinity(0, cpu_list(args.client_cpus))
    loop_path, speech22 = make_audio(workdir, args.audio_cache)
    rows = []
    with redis_server(workdir / "redis", appendonly=False) as redis_url:
        doubles_port = free_port()
        server, stt, _orch = await serve_doubles(doubles_port, speech22, args.reply_s, args.cycle_s)
        try:
            for n in [int(x) for x in args.sessions.split(",")]:
                row = await run_one(n, args, redis_url, doubles_port, stt, loop_path, workdir)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            await server.stop(1)
    cols = ["sessions", "callers", "edge_cpu_cores", "edge_cpu_ms_per_session_s", "sessions_per_core", "lateness_p50_ms",
            "lateness_p99_ms", "late_ticks", "recv_delay_p50_ms", "recv_delay_p99_ms", "inbound_frames_lost",
            "outbound_packets_lost", "drop_pct", "caller_rtp_packets_per_s", "stt_audio_s_per_s", "stt_zero_pct",
            "stt_messages_per_s", "connected"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(f"\n(load average during the run: {os.getloadavg()}; work dir {workdir})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
