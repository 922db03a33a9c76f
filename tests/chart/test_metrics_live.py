"""The live counterpart of test_chart_metrics.py: after one voice call through
the local stack, every metric the chart's dashboards, rules, autoscalers and
hooks query is exported by some service's /metrics, with the CATALOG type.

Services create a metric when they first record it, so metrics that only
events produce (a barge-in, a recovery, an error) may not be on /metrics after a
plain call; those must at least be recorded by a service's code. PENDING lists
contract metrics no service records yet; the test fails once one is, so the
list is kept honest."""

from __future__ import annotations

import re
import urllib.request

import pytest

import chartlib

pytestmark = [pytest.mark.e2e, pytest.mark.chart]

# A call with a committed user turn and a spoken answer produces these.
EVERY_CALL = {
    "voxmesh_ttfa_seconds", "voxmesh_eou_delay_seconds", "voxmesh_stt_final_seconds", "voxmesh_llm_ttft_seconds",
    "voxmesh_tts_first_chunk_seconds", "voxmesh_first_clause_seconds", "voxmesh_active_sessions",
    "voxmesh_stt_active_streams", "voxmesh_tts_active_streams", "voxmesh_llm_queue_depth", "voxmesh_turns_total",
}
# In the metrics contract and read by the chart, recorded by no service yet.
PENDING: set[str] = set()


def exported_types(text: str) -> dict[str, str]:
    """name -> type from the `# TYPE` lines of a Prometheus text exposition."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}


def scrape_all(stack) -> dict[str, dict[str, str]]:
    out = {}
    for service, url in stack.metrics_urls.items():
        with urllib.request.urlopen(url, timeout=10) as r:
            out[service] = exported_types(r.read().decode())
    return out


def recorded_in_source(name: str) -> bool:
    src = chartlib.REPO / "services"
    return any(f'"{name}"' in p.read_text() for p in src.glob("*/src/**/*.py"))


def test_chart_metrics_are_exported_live(request, tmp_path):
    stack = chartlib.get_stack(request)
    from voxmesh.testing.speech import ORDER_QUESTION, say_to_wav

    wav = say_to_wav(ORDER_QUESTION, tmp_path / "prompt.wav", lead_silence=1.0, tail_silence=1.5)
    result = stack.call(wav)
    assert result.get("agent_text"), f"the stack did not answer the call (not a chart problem): {result}"

    live = scrape_all(stack)
    bases, problems = chartlib.referenced_catalog_metrics()
    assert not problems, "\n".join(problems)
    catalog = chartlib.catalog()
    where: dict[str, list[str]] = {}
    for service, types in live.items():
        for name, typ in types.items():
            where.setdefault(name, []).append(f"{service}:{typ}")

    wrong_type, missing, unrecorded, landed = [], [], [], []
    for name in sorted(bases):
        seen = where.get(name, [])
        for entry in seen:
            if entry.split(":", 1)[1] != catalog[name]:
                wrong_type.append(f"{name} is a {catalog[name]} in CATALOG but {entry}")
        if name in PENDING:
            if seen or recorded_in_source(name):
                landed.append(name)
            continue
        if not seen:
            if name in EVERY_CALL:
                missing.append(name)
            elif not recorded_in_source(name):
                unrecorded.append(name)
    assert not wrong_type, "\n".join(wrong_type)
    assert not missing, f"not on any /metrics after a call: {missing}\nexported: {sorted(where)}"
    assert not unrecorded, f"queried by the chart, recorded by no service: {unrecorded}"
    assert not landed, f"now recorded, drop them from PENDING: {landed}"
