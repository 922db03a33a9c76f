"""Helpers for the chart checks: a real helm, rendering the chart's variants,
tools installed on demand (idempotent, cached under the git-ignored .cache/),
and PromQL metric-name extraction."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "voxmesh"
CACHE = REPO / ".cache"
HERE = pathlib.Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"
RELEASE = "voxmesh"
NAMESPACE = "voice"

# Every values combination CI renders, lints and validates.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "cpu": ["values-cpu.yaml"],
    "gpu": ["values-gpu.yaml"],
    "gpu-turn": ["values-gpu.yaml", "ci/turn-values.yaml"],
    "gpu-keda": ["values-gpu.yaml", "ci/keda-values.yaml"],
    "gpu-adapter": ["values-gpu.yaml", "ci/adapter-values.yaml"],
    "external-redis": ["ci/external-redis-values.yaml"],
}

# Kinds that kubernetes-validate has no schema for: checked against tests/chart/schemas.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
}

GPU_RESOURCE = "nvidia.com/gpu"


# --------------------------------------------------------------------------- tools


def ensure_module(module: str, pip_name: str | None = None):
    """Import `module`, pip-installing `pip_name` into this interpreter if missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    spec = pip_name or module
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--cache-dir", str(CACHE / "pip"), spec],
        check=True,
    )
    importlib.invalidate_caches()
    return importlib.import_module(module)


@functools.cache
def helm_binary() -> pathlib.Path:
    spec = importlib.util.spec_from_file_location("fetch_helm", REPO / "scripts" / "fetch_helm.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod.ensure("helm")


def helm_env() -> dict[str, str]:
    env = dict(os.environ)
    base = CACHE / "helm-home"
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env[var] = str(base / sub)
    return env


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=helm_env(), cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ensure_apt_tool(binary: str, package: str) -> str:
    """Path of `binary`, installing Debian `package` with apt-get when missing (CI runs as root)."""
    found = shutil.which(binary)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True)
        found = shutil.which(binary)
    if not found:
        pytest.fail(f"{binary} is missing: apt-get install {package}")
    return found


def promtool() -> str:
    return ensure_apt_tool("promtool", "prometheus")


def get_stack(request):
    """The lead's `stack` fixture (tests/conftest.py), or skip when it is not there yet."""
    try:
        return request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        pytest.skip("no `stack` fixture yet (tests/conftest.py provides it once the local stack is wired)")


# ------------------------------------------------------------------------ render


def values_args(files: list[str]) -> list[str]:
    args: list[str] = []
    for f in files:
        args += ["-f", str(CHART / f)]
    return args


@functools.cache
def render_text(variant: str) -> str:
    proc = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(VARIANTS[variant]))
    return proc.stdout


@functools.cache
def render(variant: str) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all(render_text(variant)) if d)


def render_with(*files: str, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values_args(list(files))]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(run_helm(*args).stdout) if d]


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs, kind: str, name: str) -> dict:
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"no {kind}/{name} rendered")


def component(name: str) -> str:
    return f"{RELEASE}-{name}"


def workloads(docs) -> list[dict]:
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")]


def pod_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def rules_of(docs) -> dict:
    """The rendered PrometheusRule's spec as a Prometheus rule file."""
    (rule,) = of_kind(docs, "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


# ------------------------------------------------------------------------ PromQL

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2", "start", "end", "keep_metric_names",
}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names a PromQL expression selects.

    Good enough for our own queries: strings, label matchers, range/subquery
    brackets and grouping clauses are removed, then every identifier that is
    not a function call or keyword is a metric name. Grafana's
    label_values(<selector>, label) is understood."""
    lv = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", expr, re.S)
    if lv:
        expr = lv.group(1)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)", s):
        name = m.group(1)
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


@functools.cache
def catalog() -> dict[str, str]:
    """Metric name -> kind (histogram|counter|gauge) from voxmesh.core.metrics.CATALOG."""
    from voxmesh.core.metrics import CATALOG

    return {name: spec.kind.__name__.lower() for name, spec in CATALOG.items()}


def resolve(name: str, recorded: dict[str, set[str]]) -> tuple[set[str], list[str]]:
    """CATALOG base names behind `name` (through recording rules), and problems."""
    cat = catalog()
    if ":" in name:
        if name not in recorded:
            return set(), [f"{name}: not a recording rule of files/rules/recording.yaml"]
        bases: set[str] = set()
        problems: list[str] = []
        for inner in recorded[name]:
            b, p = resolve(inner, recorded)
            bases |= b
            problems += p
        return bases, problems
    if name in cat:
        if cat[name] == "histogram":
            return {name}, [f"{name}: a histogram is queried as {name}_bucket/_sum/_count, not by its base name"]
        return {name}, []
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in cat:
            if cat[base] != "histogram":
                return {base}, [f"{name}: {base} is a {cat[base]}, it has no {suffix} series"]
            return {base}, []
    return set(), [f"{name}: not in voxmesh.core.metrics.CATALOG"]


def recording_rules() -> dict[str, set[str]]:
    """record name -> metric names its expression reads (files/rules/recording.yaml)."""
    doc = yaml.safe_load((CHART / "files" / "rules" / "recording.yaml").read_text())
    out: dict[str, set[str]] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            out.setdefault(rule["record"], set()).update(metric_names(rule["expr"]))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every query in the shipped dashboards."""
    out = []
    for path in sorted((CHART / "files" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())

        def walk(panels):
            for p in panels:
                yield p
                yield from walk(p.get("panels", []))

        for p in walk(dash["panels"]):
            for t in p.get("targets", []):
                out.append((f"{path.name}: {p['title']}", t["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((f"{path.name}: variable {var['name']}", q))
    return out


def autoscaler_queries(docs) -> list[tuple[str, str]]:
    """(where, expr or metric name) of every metric an autoscaler reads."""
    out = []
    for d in of_kind(docs, "ScaledObject"):
        for t in d["spec"]["triggers"]:
            if t["type"] == "prometheus":
                out.append((f"ScaledObject/{d['metadata']['name']}", t["metadata"]["query"]))
    for d in of_kind(docs, "HorizontalPodAutoscaler"):
        for m in d["spec"].get("metrics", []):
            if m["type"] in ("Pods", "Object", "External"):
                key = m["type"].lower()
                out.append((f"HPA/{d['metadata']['name']}", m[key]["metric"]["name"]))
    return out


def prestop_metrics(docs) -> list[tuple[str, str]]:
    """Metric names a preStop hook reads from /metrics (the edge's drain wait)."""
    out = []
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            cmd = " ".join(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
            for name in sorted(set(re.findall(r"\bvoxmesh_[a-z0-9_]+", cmd))):
                out.append((f"preStop of {w['metadata']['name']}", name))
    return out


def adapter_queries() -> list[tuple[str, str]]:
    doc = yaml.safe_load((REPO / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    out = []
    for r in doc["rules"]["custom"]:
        out.append(("prometheus-adapter seriesQuery", r["seriesQuery"]))
        out.append(("prometheus-adapter name.as", r["name"]["as"]))
        out.append(("prometheus-adapter metricsQuery", r["metricsQuery"].replace("<<.Series>>", r["seriesQuery"].split("{")[0]).replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod")))
    return out


def chart_metric_references() -> list[tuple[str, str]]:
    """Every (where, expr) the chart and its companions query, over all variants."""
    refs = [(f"recording rule {r}", " or ".join(sorted(names))) for r, names in recording_rules().items()]
    seen = set()
    for variant in VARIANTS:
        docs = render(variant)
        for rule_group in rules_of(docs)["groups"] if of_kind(docs, "PrometheusRule") else []:
            for rule in rule_group["rules"]:
                item = (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
                if item not in seen:
                    seen.add(item)
                    refs.append(item)
        for item in prestop_metrics(docs):
            if item not in seen:
                seen.add(item)
                refs.append(item)
        for item in autoscaler_queries(docs):
            if item not in seen:
                seen.add(item)
                refs.append(item)
    refs += dashboard_queries()
    refs += adapter_queries()
    return refs


def referenced_catalog_metrics() -> tuple[set[str], list[str]]:
    """CATALOG names the chart depends on, and every problem found on the way."""
    recorded = recording_rules()
    bases: set[str] = set()
    problems: list[str] = []
    for where, expr in chart_metric_references():
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        for name in names:
            b, p = resolve(name, recorded)
            bases |= b
            problems += [f"{where}: {x}" for x in p]
    return bases, problems
