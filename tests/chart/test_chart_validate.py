"""Every rendered object validated against a schema, strictly:
- built-in kinds: kubernetes-validate --strict (offline OpenAPI schemas; unknown
  fields are errors) for the oldest Kubernetes the chart supports and the newest
  the validator knows;
- custom resources (ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject):
  jsonschema against the minimal CRD-derived schemas in tests/chart/schemas, plus
  the checks a CRD's list-map keys and KEDA's webhook would make.
"""

from __future__ import annotations

import json

import pytest

import chartlib
from chartlib import CUSTOM_KINDS, SCHEMAS, VARIANTS

pytestmark = pytest.mark.chart

# Chart.yaml kubeVersion is >=1.28; the newest is the validator's latest.
K8S_VERSIONS = ["1.28.0", "1.37.0"]


@pytest.fixture(scope="module")
def kv():
    return chartlib.ensure_module("kubernetes_validate", "kubernetes-validate")


@pytest.fixture(scope="module")
def jsonschema():
    return chartlib.ensure_module("jsonschema")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_builtin_kinds_validate_strict(helm, kv, variant, version):
    failures = []
    checked = 0
    for doc in chartlib.render(variant):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kv.validate(doc, version, strict=True)
            checked += 1
        except kv.ValidationError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        except kv.SchemaNotFoundError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: no schema ({exc})")
    assert not failures, "\n".join(failures)
    assert checked > 30


def _validator(jsonschema, filename):
    schema = json.loads((SCHEMAS / filename).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_custom_resources_validate(helm, jsonschema, variant):
    failures = []
    seen = set()
    for doc in chartlib.render(variant):
        key = (doc["apiVersion"], doc["kind"])
        if key not in CUSTOM_KINDS:
            continue
        seen.add(key)
        for err in _validator(jsonschema, CUSTOM_KINDS[key]).iter_errors(doc):
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {err.message} at {list(err.absolute_path)}")
    assert not failures, "\n".join(failures)
    assert ("monitoring.coreos.com/v1", "PrometheusRule") in seen


def test_every_custom_kind_is_rendered_somewhere(helm):
    """Each CR schema is exercised by at least one variant (and only known CRs are rendered)."""
    kinds = {(d["apiVersion"], d["kind"]) for v in VARIANTS for d in chartlib.render(v)}
    assert set(CUSTOM_KINDS) <= kinds
    builtin_groups = ("v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")
    unknown = {k for k in kinds if k not in CUSTOM_KINDS and k[0] not in builtin_groups}
    assert not unknown, f"rendered kinds with no schema check: {unknown}"


def test_custom_schemas_reject_mistakes(jsonschema):
    """The CR schemas are strict enough to catch the usual slips."""
    sm = _validator(jsonschema, "servicemonitor.json")
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": "metrics", "interval": "15s"}]}}
    assert not list(sm.iter_errors(good))
    bad = json.loads(json.dumps(good))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    assert list(sm.iter_errors(bad))
    bad = json.loads(json.dumps(good))
    bad["spec"]["endpoints"][0]["interval"] = "15 s"
    assert list(sm.iter_errors(bad))
    so = _validator(jsonschema, "scaledobject.json")
    obj = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
           "spec": {"scaleTargetRef": {"name": "d"}, "triggers": [{"type": "prometheus", "metadata": {"threshold": 2}}]}}
    assert list(so.iter_errors(obj)), "metadata values must be strings"
    pr = _validator(jsonschema, "prometheusrule.json")
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
            "spec": {"groups": [{"name": "g", "rules": [{"record": "a:b", "expr": "up", "for": "5m"}]}]}}
    assert list(pr.iter_errors(rule)), "a recording rule has no `for`"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_custom_resource_semantics(helm, variant):
    """What the CRDs' list-map keys and KEDA's admission webhook would reject."""
    docs = chartlib.render(variant)
    for rule in chartlib.of_kind(docs, "PrometheusRule"):
        names = [g["name"] for g in rule["spec"]["groups"]]
        assert len(names) == len(set(names)), f"duplicate rule groups {names}"
    for so in chartlib.of_kind(docs, "ScaledObject"):
        spec = so["spec"]
        assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["scaleTargetRef"]["kind"] in ("Deployment", "StatefulSet")
        chartlib.named(docs, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
        names = [t.get("name") for t in spec["triggers"] if t.get("name")]
        assert len(names) == len(set(names))
        for t in spec["triggers"]:
            if t["type"] in ("cpu", "memory"):
                assert t["metricType"] in ("Utilization", "AverageValue")
                float(t["metadata"]["value"])
            if t["type"] == "prometheus":
                md = t["metadata"]
                assert md["serverAddress"].startswith("http")
                assert float(md["threshold"]) > 0
                assert md["query"].strip()
