"""The Grafana dashboards: built from deploy/dashboards/build.py (committed JSON
and docs/dashboards.md in sync), well-formed, and shipped as sidecar ConfigMaps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import chartlib
from chartlib import CHART, REPO

pytestmark = pytest.mark.chart

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))


def test_dashboards_and_doc_are_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "deploy" / "dashboards" / "build.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_four_dashboards_exist():
    assert {p.stem for p in DASHBOARDS} == {"voxmesh-turn-latency", "voxmesh-sessions", "voxmesh-pools", "voxmesh-recoveries"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_well_formed(path):
    d = json.loads(path.read_text())
    assert d["uid"] == path.stem and len(d["uid"]) <= 40
    assert {v["name"] for v in d["templating"]["list"]} == {"datasource", "namespace"}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    boxes = []
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        boxes.append((g["x"], g["y"], g["w"], g["h"]))
        if p["type"] == "row":
            continue
        assert p["description"].strip(), f"{p['title']}: say what the panel answers"
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: query ignores the namespace filter"
    for i, (x, y, w, h) in enumerate(boxes):  # no two panels overlap
        for (x2, y2, w2, h2) in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, "overlapping panels"


@pytest.mark.parametrize("variant", ["default", "gpu"])
def test_dashboards_ship_as_sidecar_configmaps(helm, variant):
    cms = [c for c in chartlib.of_kind(chartlib.render(variant), "ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert len(cms) == len(DASHBOARDS)
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, body), = cm["data"].items()
        assert json.loads(body) == json.loads((CHART / "files" / "dashboards" / key).read_text())
