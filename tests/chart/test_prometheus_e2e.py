"""A real Prometheus (Debian's) scrapes the local stack's /metrics with the
chart's recording rules loaded as they ship (files/rules/recording.yaml); after
a voice call, the TTFA p95 recording rule answers a number over the HTTP API."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
import warnings

import pytest
import yaml

import chartlib
from voxmesh.testing.servers import stop_process
from test_metrics_live import scrape_all

pytestmark = [pytest.mark.e2e, pytest.mark.chart]

RULES = chartlib.CHART / "files" / "rules" / "recording.yaml"


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _query(base: str, expr: str) -> list[dict]:
    body = json.loads(_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait(what: str, fn, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


@pytest.fixture
def prometheus(request, tmp_path):
    stack = chartlib.get_stack(request)
    binary = chartlib.ensure_apt_tool("prometheus", "prometheus")
    from voxmesh.testing.servers import free_port

    scrape_configs = []
    for service, url in stack.metrics_urls.items():
        parsed = urllib.parse.urlsplit(url)
        scrape_configs.append({"job_name": service, "metrics_path": parsed.path or "/metrics",
                               "static_configs": [{"targets": [parsed.netloc]}]})
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)], "scrape_configs": scrape_configs}
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("Prometheus ready", lambda: proc.poll() is None and _get(f"{base}/-/ready"), 60)
        yield stack, base
    finally:
        stop_process(proc)
        log.close()


def test_ttfa_p95_recording_rule_answers_after_a_call(prometheus, tmp_path):
    stack, base = prometheus
    from voxmesh.testing.speech import ORDER_QUESTION, say_to_wav

    # every target scraped and healthy before the call
    jobs = set(stack.metrics_urls)
    _wait("all targets up", lambda: {r["metric"]["job"] for r in _query(base, "up == 1")} >= jobs, 60)
    # the rules file loaded as shipped
    groups = json.loads(_get(f"{base}/api/v1/rules"))["data"]["groups"]
    assert {g["name"] for g in groups} == {g["name"] for g in yaml.safe_load(RULES.read_text())["groups"]}

    existed_before = "voxmesh_ttfa_seconds" in scrape_all(stack).get("edge", {})
    time.sleep(2)  # two scrapes of the pre-call state
    wav = say_to_wav(ORDER_QUESTION, tmp_path / "prompt.wav", lead_silence=1.0, tail_silence=1.5)
    result = stack.call(wav)
    assert result.get("agent_text"), f"the stack did not answer the call (not a chart problem): {result}"

    def p95():
        result = _query(base, "voxmesh:ttfa_seconds:p95_5m")
        values = [float(r["value"][1]) for r in result]
        return [v for v in values if math.isfinite(v)]

    if not existed_before:
        # The edge creates the histogram at its first observation, so Prometheus
        # first sees it with the call already counted: rate() has no increase to
        # show until the next observation. One more call gives it one.
        warnings.warn("voxmesh_ttfa_seconds appears only after the first turn; a second call feeds rate()")
        _wait("the histogram scraped", lambda: _query(base, "voxmesh_ttfa_seconds_count"), 30)
        stack.call(wav)
    values = _wait("a finite voxmesh:ttfa_seconds:p95_5m", p95, 90)
    assert all(0 < v < 30 for v in values), values
    # the stage breakdown the dashboards read is recorded too
    assert _wait("voxmesh:llm_ttft_seconds:p95_5m", lambda: [r for r in _query(base, "voxmesh:llm_ttft_seconds:p95_5m")
                                                          if math.isfinite(float(r["value"][1]))], 30)
