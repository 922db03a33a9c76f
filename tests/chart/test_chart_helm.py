"""helm lint --strict and helm template for every values file and variant, and
values.schema.json rejecting bad values."""

from __future__ import annotations

import pytest

import chartlib
from chartlib import CHART, VARIANTS, run_helm, values_args

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(helm, variant):
    proc = run_helm("lint", "--strict", str(CHART), "--namespace", chartlib.NAMESPACE, *values_args(VARIANTS[variant]))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_template_renders(helm, variant):
    docs = chartlib.render(variant)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects rendered"
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]


def test_every_values_file_is_a_variant():
    """A new values file under the chart gets rendered by CI too."""
    files = {str(p.relative_to(CHART)) for p in CHART.glob("values-*.yaml")} | {
        str(p.relative_to(CHART)) for p in (CHART / "ci").glob("*.yaml")
    }
    covered = {f for fs in VARIANTS.values() for f in fs}
    assert files <= covered, f"not rendered by any variant: {sorted(files - covered)}"


def test_notes_render(helm):
    """NOTES.txt renders for each variant (helm install --dry-run=client needs no cluster)."""
    for variant in ("default", "gpu-turn", "gpu-keda"):
        proc = run_helm("install", chartlib.RELEASE, str(CHART), "--dry-run=client", "--namespace", chartlib.NAMESPACE,
                        *values_args(VARIANTS[variant]))
        notes = proc.stdout.split("NOTES:", 1)[1]
        assert "voxmesh-media-edge" in notes
        if variant == "gpu-keda":
            assert "KEDA" in notes
        if variant == "default":
            assert "prometheus-adapter" in notes


BAD_VALUES = [
    (["mediaEdge.udp.mode=nodePort"], "mediaEdge/udp/mode"),
    (["stt.replicaz=3"], "additional properties 'replicaz'"),
    (["llm.backend=tgi"], "/llm/backend"),
    (["tts.backend=bark"], "/tts/backend"),
    (["autoscaling.engine=vpa"], "/autoscaling/engine"),
    (["monitoring.scrape.kind=Probe"], "/monitoring/scrape/kind"),
    (["monitoring.scrape.interval=15 seconds"], "/monitoring/scrape/interval"),
    (["redis.appendfsync=sometimes"], "/redis/appendfsync"),
    (["redis.image.tag=latest"], "/redis/image/tag"),
    (["llm.vllm.gpuMemoryUtilization=1.5"], "gpuMemoryUtilization"),
    (["mediaEdge.udp.mode=turn"], "needs mediaEdge.turn.url"),
    (["llm.backend=vllm"], "needs llm.gpu.enabled=true"),
    (["redis.enabled=false"], "redis.external.url"),
    (["llm.modelVolume.enabled=true"], "llm.modelVolume: set claimName or source"),
    (["stt.autoscaling.minReplicas=5", "stt.autoscaling.maxReplicas=2"], "minReplicas > maxReplicas"),
]


@pytest.mark.parametrize("sets,message", BAD_VALUES, ids=[s[0][0] for s in BAD_VALUES])
def test_bad_values_are_rejected(helm, sets, message):
    args = ["template", chartlib.RELEASE, str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = run_helm(*args, check=False)
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr



def test_packaged_chart_renders_the_same(helm, tmp_path):
    """`helm package` keeps files/ (rules, dashboards): the .tgz renders what the folder does."""
    import yaml

    run_helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("voxmesh-*.tgz")
    out = run_helm("template", chartlib.RELEASE, str(tgz), "--namespace", chartlib.NAMESPACE, *values_args(VARIANTS["gpu"])).stdout

    def comparable(docs):  # the generated Redis password differs per render
        return [{**d, "data": None} if d["kind"] == "Secret" else d for d in docs]

    assert comparable([d for d in yaml.safe_load_all(out) if d]) == comparable(chartlib.render("gpu"))
