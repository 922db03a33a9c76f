"""Every metric that a dashboard panel, recording rule, alert or autoscaler
queries is one the services export: a name in voxmesh.core.metrics.CATALOG
(histograms through _bucket/_sum/_count), or a recording rule of
files/rules/recording.yaml whose own inputs are. The live counterpart, against
the running stack's /metrics, is test_metrics_live.py."""

from __future__ import annotations

import pytest

import chartlib
from chartlib import metric_names

pytestmark = pytest.mark.chart


@pytest.mark.parametrize(
    "expr,names",
    [
        ('histogram_quantile(0.95, sum by (namespace, le) (rate(voxmesh_ttfa_seconds_bucket[5m])))', {"voxmesh_ttfa_seconds_bucket"}),
        ('sum(voxmesh:errors:rate5m{namespace=~"$namespace"}) / clamp_min(sum(voxmesh:turns:rate5m), 0.1)', {"voxmesh:errors:rate5m", "voxmesh:turns:rate5m"}),
        ('sum(rate(voxmesh_sessions_total{namespace=~"$namespace", outcome!~"ok|closed"}[$__rate_interval])) * 60', {"voxmesh_sessions_total"}),
        ('a > 1e-9 and on (namespace) b offset 5m unless bool c', {"a", "b", "c"}),
        ('label_values(voxmesh_active_sessions, namespace)', {"voxmesh_active_sessions"}),
        ('sum(x{job="vx-voxmesh-llm"}) by (pod)', {"x"}),
        ('max_over_time(voxmesh_llm_queue_depth[10m:1m])', {"voxmesh_llm_queue_depth"}),
        ('vector(1)', set()),
    ],
)
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names


def test_resolve_rejects_unknown_and_misused_names():
    recorded = {"voxmesh:x:p95_5m": {"voxmesh_ttfa_seconds_bucket"}}
    assert chartlib.resolve("voxmesh:x:p95_5m", recorded) == ({"voxmesh_ttfa_seconds"}, [])
    assert chartlib.resolve("voxmesh_ttfa_second_bucket", recorded)[1]  # typo
    assert chartlib.resolve("voxmesh_ttfa_seconds", recorded)[1]  # histogram without suffix
    assert chartlib.resolve("voxmesh_llm_queue_depth_bucket", recorded)[1]  # gauge has no buckets
    assert chartlib.resolve("voxmesh:nope", recorded)[1]  # undefined recording rule


def test_every_queried_metric_is_in_the_catalog(helm):
    bases, problems = chartlib.referenced_catalog_metrics()
    assert not problems, "\n".join(sorted(set(problems)))
    # the metrics the design names as what every dashboard reads are all used
    assert {
        "voxmesh_ttfa_seconds", "voxmesh_bargein_stop_seconds", "voxmesh_eou_delay_seconds", "voxmesh_stt_final_seconds",
        "voxmesh_llm_ttft_seconds", "voxmesh_tts_first_chunk_seconds", "voxmesh_active_sessions",
        "voxmesh_interruptions_total", "voxmesh_session_recoveries_total", "voxmesh_llm_queue_depth",
        "voxmesh_tts_active_streams", "voxmesh_stt_active_streams",
    } <= bases


def test_every_recording_rule_is_used():
    """A recording rule nobody reads is dead weight on Prometheus."""
    used = set()
    for _where, expr in chartlib.chart_metric_references():
        used |= {n for n in metric_names(expr) if ":" in n}
    unused = set(chartlib.recording_rules()) - used
    assert not unused, f"recording rules no alert or panel reads: {sorted(unused)}"


def test_autoscalers_read_the_pool_gauges(helm):
    expected = {
        "voxmesh-media-edge": "voxmesh_active_sessions",
        "voxmesh-stt": "voxmesh_stt_active_streams",
        "voxmesh-llm": "voxmesh_llm_queue_depth",
        "voxmesh-tts": "voxmesh_tts_active_streams",
        "voxmesh-orchestrator": "voxmesh_orchestrator_sessions",
    }
    for variant in ("gpu-keda", "gpu-adapter"):
        refs = chartlib.autoscaler_queries(chartlib.render(variant))
        seen = {}
        for where, expr in refs:
            seen[where.split("/", 1)[1]] = metric_names(expr)
        for name, metric in expected.items():
            assert seen.get(name) == {metric}, (variant, name, seen.get(name))
