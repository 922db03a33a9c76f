#!/usr/bin/env python3
"""Build the Grafana dashboards of the chart and their documentation.

The panels are declared once here, each with the question it answers; this
script writes
  deploy/helm/voxmesh/files/dashboards/<uid>.json   (loaded by the Grafana sidecar)
  docs/dashboards.md                               (what each panel answers)
Run it after changing a panel; tests/chart/test_dashboards.py fails when the
committed files differ from what it builds.

    python deploy/dashboards/build.py          # write
    python deploy/dashboards/build.py --check  # exit 1 if out of date

Queries use only metric names from voxmesh.core.metrics.CATALOG and the
recording rules in files/rules/recording.yaml (checked by tests/chart).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "deploy" / "helm" / "voxmesh" / "files" / "dashboards"
DOC = ROOT / "docs" / "dashboards.md"

NS = 'namespace=~"$namespace"'
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"


@dataclass
class Panel:
    title: str
    answers: str
    targets: list[tuple[str, str]]
    kind: str = "timeseries"  # timeseries | stat | heatmap | bargauge
    unit: str = "short"
    width: int = 12
    height: int = 8
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    stack: bool = False


@dataclass
class Row:
    title: str


@dataclass
class Dashboard:
    uid: str
    title: str
    about: str
    items: list[Panel | Row]


def q(quantile: float, metric: str, by: str = "") -> str:
    """Quantile of a histogram over the dashboard's rate interval."""
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{{{NS}}}[{RI}])))"


def rec(metric: str, pct: int) -> str:
    """A latency percentile from the recording rules (worst selected namespace)."""
    return f"max(voxmesh:{metric.removeprefix('voxmesh_')}:p{pct}_5m{{{NS}}})"


def mean(metric: str) -> str:
    return f"sum(rate({metric}_sum{{{NS}}}[{RI}])) / sum(rate({metric}_count{{{NS}}}[{RI}]))"


def rate(metric: str, by: str = "", scale: str = "") -> str:
    agg = f"sum by ({by})" if by else "sum"
    return f"{agg} (rate({metric}{{{NS}}}[{RI}])){scale}"


STAGES = [
    ("voxmesh_eou_delay_seconds", "end of turn (stt)"),
    ("voxmesh_stt_final_seconds", "final transcript (stt)"),
    ("voxmesh_first_clause_seconds", "first clause (orchestrator)"),
    ("voxmesh_llm_ttft_seconds", "LLM first token"),
    ("voxmesh_tts_first_chunk_seconds", "TTS first chunk"),
    ("voxmesh_ttfa_seconds", "end to end: first audio"),
]

LATENCY_GOOD = [(0, "green"), (0.5, "yellow"), (0.8, "red")]

TURN_LATENCY = Dashboard(
    uid="voxmesh-turn-latency",
    title="voxmesh / Turn latency",
    about="How long one turn takes, end to end and stage by stage, and how fast the agent stops when interrupted.",
    items=[
        Row("End to end"),
        Panel("Time to first audio p95", "Is the agent answering fast enough right now? p95 over 5 minutes of the time from the user's end of speech to the first agent audio frame (recording rule voxmesh:ttfa_seconds:p95_5m, the input of VoxmeshTTFAHigh).",
              [(f"max(voxmesh:ttfa_seconds:p95_5m{{{NS}}})", "p95")], kind="stat", unit="s", width=6, height=4, thresholds=LATENCY_GOOD),
        Panel("Time to first audio p50", "What does a typical turn feel like? The median of the same delay.",
              [(f"max(voxmesh:ttfa_seconds:p50_5m{{{NS}}})", "p50")], kind="stat", unit="s", width=6, height=4, thresholds=LATENCY_GOOD),
        Panel("Barge-in stop p95", "When the user talks over the agent, how long until its audio stops? (voxmesh:bargein_stop_seconds:p95_5m, the input of VoxmeshBargeInStopSlow).",
              [(f"max(voxmesh:bargein_stop_seconds:p95_5m{{{NS}}})", "p95")], kind="stat", unit="s", width=6, height=4,
              thresholds=[(0, "green"), (0.2, "yellow"), (0.3, "red")]),
        Panel("Turns per second", "How much conversation is flowing: committed user turns per second.",
              [(f"sum(voxmesh:turns:rate5m{{{NS}}})", "turns/s")], kind="stat", unit="reqps", width=6, height=4),
        Panel("Time to first audio", "How has first-audio latency moved over time, at the median, p95 and p99?",
              [(rec("voxmesh_ttfa_seconds", 50), "p50"), (rec("voxmesh_ttfa_seconds", 95), "p95"), (rec("voxmesh_ttfa_seconds", 99), "p99")], unit="s"),
        Panel("Time to first audio distribution", "Is the latency one slow tail or two populations (e.g. cached vs uncached prompts, one slow pod)? Turns per latency bucket.",
              [(f"sum by (le) (increase(voxmesh_ttfa_seconds_bucket{{{NS}}}[{RI}]))", "{{le}}")], kind="heatmap", unit="s"),
        Row("By stage"),
        Panel("Stage latency p95", "Which stage of the turn grew when first audio got slower? p95 of each stage: end-of-turn decision, final transcript, first clause out of the orchestrator, LLM first token, TTS first chunk, and the end-to-end delay they lead to.",
              [(rec(m, 95), label) for m, label in STAGES], unit="s", width=24),
        Panel("Mean time per stage", "Where does the time of an average turn go? Mean of each stage over the range. Stages overlap: end of turn and final transcript both start at the end of speech, and the LLM first token is inside the first clause.",
              [(mean(m), label) for m, label in STAGES], kind="bargauge", unit="s"),
        Panel("Stage latency p50", "The typical turn, stage by stage: a stage whose median moves is a steady cost, one whose p95 alone moves is queueing or a slow pod.",
              [(rec(m, 50), label) for m, label in STAGES], unit="s"),
        Panel("Interim transcript latency", "How soon after the user starts speaking does text arrive (what speculative work can start on)?",
              [(rec("voxmesh_stt_interim_seconds", 50), "p50"), (rec("voxmesh_stt_interim_seconds", 95), "p95")], unit="s"),
        Panel("Barge-in stop and LLM cancel", "When interrupted, how fast does audio stop at the edge, and how fast does generation stop in the LLM pool (wasted GPU time)?",
              [(rec("voxmesh_bargein_stop_seconds", 50), "audio stop p50"), (rec("voxmesh_bargein_stop_seconds", 95), "audio stop p95"),
               (rec("voxmesh_llm_cancel_seconds", 95), "LLM cancel p95")], unit="s"),
        Panel("TTS realtime factor", "Does synthesis keep ahead of playback? Synthesis time over audio duration per clause; above 1 the agent stutters.",
              [(q(0.5, "voxmesh_tts_realtime_factor"), "p50"), (q(0.95, "voxmesh_tts_realtime_factor"), "p95")], unit="none",
              thresholds=[(0, "green"), (0.5, "yellow"), (1, "red")]),
        Panel("Playout timing", "Is the edge's 20 ms playout clock on time? Share of late playout ticks and p99 tick lateness; lateness is heard as gaps.",
              [(f"{rate('voxmesh_playout_late_frames_total')} / clamp_min({rate('voxmesh_playout_frames_total')}, 1e-9)", "late tick share"),
               (q(0.99, "voxmesh_frame_lateness_seconds"), "lateness p99 (s)")], unit="percentunit"),
    ],
)

SESSIONS = Dashboard(
    uid="voxmesh-sessions",
    title="voxmesh / Sessions and interruptions",
    about="How many conversations are live, how they start and end, and how often users interrupt the agent.",
    items=[
        Row("Sessions"),
        Panel("Active sessions", "How many conversations are live now (WebRTC sessions on all edge pods)?",
              [(f"sum(voxmesh:active_sessions:sum{{{NS}}})", "sessions")], kind="stat", width=6, height=4),
        Panel("Sessions started per minute", "How fast are new conversations arriving?",
              [(rate("voxmesh_sessions_total", scale=" * 60"), "per min")], kind="stat", width=6, height=4),
        Panel("Interruptions per turn", "How often does the user talk over the agent? A rise after a release means the agent talks too long or end of turn fires too early.",
              [(f"sum(rate(voxmesh_interruptions_total{{{NS}}}[{RI}])) / clamp_min(sum(rate(voxmesh_turns_total{{{NS}}}[{RI}])), 1e-9)", "per turn")],
              kind="stat", unit="percentunit", width=6, height=4),
        Panel("Tool calls per minute", "How much work do the agents delegate to tools?",
              [(rate("voxmesh_tool_calls_total", scale=" * 60"), "per min")], kind="stat", width=6, height=4),
        Panel("Active sessions by edge pod", "Is the session hash ring spreading conversations evenly over the edge pods, and did a drain move them?",
              [(f"sum by (pod) (voxmesh_active_sessions{{{NS}}})", "{{pod}}")], stack=True),
        Panel("Sessions by outcome", "How do sessions end (per minute, by outcome)? Failed or rejected sessions point at signaling or ICE trouble.",
              [(rate("voxmesh_sessions_total", "outcome", " * 60"), "{{outcome}}")], stack=True),
        Panel("Signaling requests", "Is WHIP signaling healthy? Requests per second by route and status code.",
              [(rate("voxmesh_http_requests_total", "route, code"), "{{route}} {{code}}")]),
        Panel("Signaling forwarded to the owner edge", "How often does a signaling request land on an edge pod that does not own the session, and does forwarding to the owner work (per minute, by outcome)? Unreachable owners point at ring membership lagging pod changes.",
              [(rate("voxmesh_edge_forwards_total", "outcome", " * 60"), "{{outcome}}")], stack=True),
        Panel("Conversation streams by orchestrator pod", "Are Converse streams spread over the orchestrator replicas?",
              [(f"sum by (pod) (voxmesh_orchestrator_sessions{{{NS}}})", "{{pod}}")], stack=True),
        Row("Turns and interruptions"),
        Panel("Turns by outcome", "Do committed turns get answered (per second, by outcome)?",
              [(rate("voxmesh_turns_total", "outcome"), "{{outcome}}")], stack=True),
        Panel("Interruptions by kind", "What kind of barge-ins happen (per minute)? Real interruptions vs. false starts resumed after a cough or a backchannel.",
              [(f"sum by (kind) (voxmesh:interruptions:rate5m{{{NS}}}) * 60", "{{kind}}")], stack=True),
        Panel("End-of-turn decisions by reason", "Why turns end: the turn model, silence, or the max-silence cap (per minute). A shift to the cap means the turn model is unsure and users wait.",
              [(rate("voxmesh_eou_total", "reason", " * 60"), "{{reason}}")], stack=True),
        Panel("Suspect end-of-turn decisions", "How often end of turn looks wrong (per minute): false (the user went on right after the agent took the turn) or late (held to the maximum wait). False ones cause interruptions, late ones add to time to first audio.",
              [(rate("voxmesh_eou_suspect_total", "kind", " * 60"), "{{kind}}")], stack=True),
        Panel("Speculative replies by outcome", "Do replies generated before the turn commit get used (per minute, by outcome)? Adopted ones save the LLM's first-token time; discarded ones are GPU time spent for nothing.",
              [(rate("voxmesh_speculative_replies_total", "outcome", " * 60"), "{{outcome}}")], stack=True),
        Panel("Tool calls by tool and outcome", "Which tools are called and do they succeed (per minute)?",
              [(rate("voxmesh_tool_calls_total", "tool, outcome", " * 60"), "{{tool}} {{outcome}}")]),
    ],
)

POOLS = Dashboard(
    uid="voxmesh-pools",
    title="voxmesh / Pool saturation",
    about="How loaded each pool is, in the unit its autoscaler targets, and how much work it does.",
    items=[
        Row("Load per pod (the autoscaling metrics)"),
        Panel("Load per pod by pool", "Which pool is closest to its autoscaling target? Average load per pod in each pool's own unit (edge sessions, stt/tts streams, llm waiting requests, orchestrator sessions); VoxmeshPoolSaturated fires when one stays above its target x saturationFactor.",
              [(f"voxmesh:pool_load_per_pod:avg{{{NS}}}", "{{pool}}")], width=12),
        Panel("Pods per pool", "How many pods each pool runs now (pods exporting the pool's load gauge): did the autoscaler add pods when load rose?",
              [(f"sum by (pool) (voxmesh:pool_pods:count{{{NS}}})", "{{pool}}")], width=12),
        Panel("stt streams per pod", "Is any stt pod carrying more streams (Transcribe calls and TranscribeMany streams) than the others (HPA target: stt.autoscaling.activeStreamsPerPod)?",
              [(f"sum by (pod) (voxmesh_stt_active_streams{{{NS}}})", "{{pod}}")], width=8),
        Panel("tts streams per pod", "Synthesize streams per tts pod (HPA target: tts.autoscaling.activeStreamsPerPod).",
              [(f"sum by (pod) (voxmesh_tts_active_streams{{{NS}}})", "{{pod}}")], width=8),
        Panel("llm queue and batch per pod", "Are requests waiting for the engine (the llm autoscaling metric) and how many are decoding per replica?",
              [(f"sum by (pod) (voxmesh_llm_queue_depth{{{NS}}})", "waiting {{pod}}"), (f"sum by (pod) (voxmesh_llm_active_requests{{{NS}}})", "decoding {{pod}}")], width=8),
        Row("Work done"),
        Panel("Audio processed", "How much audio the pools handle: seconds of speech received by stt and synthesized by tts per second of wall time (the realtime load).",
              [(rate("voxmesh_stt_audio_seconds_total"), "stt in"), (rate("voxmesh_tts_audio_seconds_total"), "tts out")], unit="none", width=8),
        Panel("LLM tokens per second", "How many tokens the llm pool generates per second.",
              [(rate("voxmesh_llm_tokens_total"), "tokens/s")], width=8),
        Panel("LLM requests by outcome", "Do generate requests finish, get cancelled by barge-in, or fail (per second)?",
              [(rate("voxmesh_llm_requests_total", "outcome"), "{{outcome}}")], stack=True, width=8),
        Panel("STT decode time", "How long one Whisper decode takes (p95 by kind: interim or final); it grows when stt pods are CPU-starved.",
              [(q(0.95, "voxmesh_stt_decode_seconds", "kind"), "{{kind}} p95")], unit="s"),
        Panel("LLM time to first token", "Is the llm pool queueing? First-token p50/p95 rise together with the queue depth when it needs replicas.",
              [(rec("voxmesh_llm_ttft_seconds", 50), "p50"), (rec("voxmesh_llm_ttft_seconds", 95), "p95")], unit="s"),
    ],
)

RECOVERIES = Dashboard(
    uid="voxmesh-recoveries",
    title="voxmesh / Recoveries and errors",
    about="What breaks, and how sessions survive it: sessions resumed after a lost component, how long that took, and errors by where.",
    items=[
        Row("Recoveries"),
        Panel("Recoveries in the last hour", "How many sessions had to recover from a lost pod (edge, stt, tts, llm, orchestrator) in the last hour?",
              [(f"sum(increase(voxmesh_session_recoveries_total{{{NS}}}[1h]))", "recoveries")], kind="stat", width=6, height=4),
        Panel("Recovery time p95", "How long did the slowest recoveries take, from the loss to the session working again?",
              [(f"max(voxmesh:recovery_seconds:p95_5m{{{NS}}})", "p95")], kind="stat", unit="s", width=6, height=4),
        Panel("Errors per turn", "What share of turns meets an error (the input of VoxmeshErrorRatioHigh)?",
              [(f"sum(voxmesh:errors:rate5m{{{NS}}}) / clamp_min(sum(voxmesh:turns:rate5m{{{NS}}}), 0.1)", "errors/turn")],
              kind="stat", unit="percentunit", width=6, height=4, thresholds=[(0, "green"), (0.02, "yellow"), (0.05, "red")]),
        Panel("Errors in the last hour", "How many errors all services answered or logged in the last hour?",
              [(f"sum(increase(voxmesh_errors_total{{{NS}}}[1h]))", "errors")], kind="stat", width=6, height=4),
        Panel("Recoveries by component", "Which component is being lost (recoveries per minute)? A spike is a recovery storm: crash-looping or evicted pods of that component (VoxmeshRecoveryStorm).",
              [(rate("voxmesh_session_recoveries_total", "component", " * 60"), "{{component}}")], stack=True),
        Panel("Recovery time by component", "How long recovery takes per lost component (p50 and p95): an edge loss costs a reconnect, an stt/tts loss a re-stream, never the conversation.",
              [(q(0.5, "voxmesh_recovery_seconds", "component"), "{{component}} p50"), (q(0.95, "voxmesh_recovery_seconds", "component"), "{{component}} p95")], unit="s"),
        Row("Errors"),
        Panel("Errors by where", "Where errors are answered or logged (per second, by `where`): which service and which call.",
              [(rate("voxmesh_errors_total", "where"), "{{where}}")], stack=True, width=24),
        Panel("Session outcomes", "Sessions per minute by outcome, to line up failures with the errors above.",
              [(rate("voxmesh_sessions_total", "outcome", " * 60"), "{{outcome}}")], stack=True),
        Panel("LLM request outcomes", "LLM requests per second by outcome: errors here are GPU or engine trouble, cancellations are barge-ins.",
              [(rate("voxmesh_llm_requests_total", "outcome"), "{{outcome}}")], stack=True),
    ],
)

DASHBOARDS = [TURN_LATENCY, SESSIONS, POOLS, RECOVERIES]


def _panel_json(p: Panel, pid: int, pos: dict) -> dict:
    targets = [
        {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i), "range": True, "instant": False}
        for i, (expr, legend) in enumerate(p.targets)
    ]
    steps = [{"color": c, "value": None if i == 0 else v} for i, (v, c) in enumerate(p.thresholds or [(0, "green")])]
    panel: dict = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.answers,
        "datasource": DS,
        "gridPos": pos,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": p.unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {},
    }
    if p.kind == "timeseries":
        panel["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if p.stack else 0,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
            "showPoints": "never",
            "thresholdsStyle": {"mode": "line" if p.thresholds else "off"},
        }
        panel["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "background", "graphMode": "area", "textMode": "value"}
    elif p.kind == "bargauge":
        panel["options"] = {"reduceOptions": {"calcs": ["mean"], "fields": "", "values": False},
                            "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}
    elif p.kind == "heatmap":
        for t in targets:
            t["format"] = "heatmap"
        panel["options"] = {"calculate": False, "yAxis": {"unit": p.unit}, "cellGap": 1,
                            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64}}
    return panel


def build(d: Dashboard) -> dict:
    panels, x, y, row_h, pid = [], 0, 0, 0, 1
    for item in d.items:
        if isinstance(item, Row):
            if x:
                y, x = y + row_h, 0
            panels.append({"id": pid, "type": "row", "title": item.title, "collapsed": False, "panels": [],
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
            pid, y, row_h = pid + 1, y + 1, 0
            continue
        if x + item.width > 24:
            y, x, row_h = y + row_h, 0, 0
        panels.append(_panel_json(item, pid, {"h": item.height, "w": item.width, "x": x, "y": y}))
        pid, x, row_h = pid + 1, x + item.width, max(row_h, item.height)
    ns_query = "label_values(voxmesh_active_sessions, namespace)"
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.about,
        "tags": ["voxmesh"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "links": [{"type": "dashboards", "tags": ["voxmesh"], "asDropdown": True, "title": "voxmesh", "includeVars": True, "keepTime": True}],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
                {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
                 "definition": ns_query, "query": {"query": ns_query, "refId": "namespace"},
                 "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0, "refresh": 2,
                 "sort": 1, "regex": "", "options": []},
            ]
        },
        "panels": panels,
    }


def render_doc() -> str:
    out = [
        "# Dashboards",
        "",
        "The chart ships four Grafana dashboards as ConfigMaps labelled for the Grafana",
        "dashboard sidecar (`monitoring.dashboards.label`, `grafana_dashboard: \"1\"` by default,",
        "in the folder of the `grafana_folder` annotation). Each has a data source picker and a",
        "namespace filter, and links to the other three. Panels read only the metrics of",
        "`voxmesh.core.metrics.CATALOG` and the recording rules of",
        "`deploy/helm/voxmesh/files/rules/recording.yaml`; `tests/chart` checks both.",
        "",
        "This page is generated with the dashboards by `python deploy/dashboards/build.py`",
        "from the same declarations, so it always describes what is shipped.",
        "",
    ]
    for d in DASHBOARDS:
        out += [f"## {d.title}", "", f"`{d.uid}`: {d.about}", ""]
        for item in d.items:
            if isinstance(item, Row):
                out += [f"### {item.title}", ""]
            else:
                out.append(f"- **{item.title}** — {item.answers}")
        out.append("")
    out += [
        "## Alerts behind the panels",
        "",
        "| alert | panel to open first |",
        "|---|---|",
        "| VoxmeshTTFAHigh | Turn latency: Stage latency p95 |",
        "| VoxmeshBargeInStopSlow | Turn latency: Barge-in stop and LLM cancel, Playout timing |",
        "| VoxmeshErrorRatioHigh | Recoveries and errors: Errors by where |",
        "| VoxmeshPoolSaturated | Pool saturation: Load per pod by pool, Pods per pool |",
        "| VoxmeshRecoveryStorm | Recoveries and errors: Recoveries by component |",
        "",
    ]
    return "\n".join(out)


def outputs() -> dict[pathlib.Path, str]:
    files = {OUT_DIR / f"{d.uid}.json": json.dumps(build(d), indent=2, sort_keys=False) + "\n" for d in DASHBOARDS}
    files[DOC] = render_doc()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = ap.parse_args()
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python deploy/dashboards/build.py):", *map(str, stale), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
