"""The chart sets only settings the services read: every VOXMESH_<SERVICE>_<FIELD>
env var in a rendered pod is a field of that service's settings dataclass, and the
backend names are ones the services know. Services whose package is not
importable here yet are skipped; settings that a later backend will read (the
vLLM and Coqui ones) are listed in PENDING until their fields exist, and the
test fails once they do so the list is cleaned up."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import chartlib
from chartlib import VARIANTS, pod_spec, render, workloads

pytestmark = pytest.mark.chart

SETTINGS = {
    "VOXMESH_STT": ("voxmesh_stt.settings", "SttSettings"),
    "VOXMESH_LLM": ("voxmesh_llm.settings", "LlmSettings"),
    "VOXMESH_TTS": ("voxmesh_tts.settings", "TtsSettings"),
    "VOXMESH_ORCHESTRATOR": ("voxmesh_orchestrator.settings", "OrchestratorSettings"),
    "VOXMESH_EDGE": ("voxmesh_edge.settings", "EdgeSettings"),
}

# In the services' contract but not read yet: the cluster backends of a later issue
# (vLLM, Coqui).
PENDING = {
    "VOXMESH_LLM_VLLM_MODEL", "VOXMESH_LLM_VLLM_GPU_MEMORY_UTILIZATION", "VOXMESH_LLM_VLLM_MAX_MODEL_LEN",
    "VOXMESH_LLM_VLLM_ENABLE_PREFIX_CACHING", "VOXMESH_TTS_COQUI_MODEL_DIR",
}


def _fields(prefix: str) -> set[str] | None:
    module, cls = SETTINGS[prefix]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    klass = getattr(mod, cls, None)
    if klass is None:  # a differently named dataclass: take the module's only settings dataclass
        found = [v for v in vars(mod).values() if dataclasses.is_dataclass(v) and isinstance(v, type)]
        if len(found) != 1:
            return None
        klass = found[0]
    return {f.name for f in dataclasses.fields(klass)}


def _env_names(variant: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for w in workloads(render(variant)):
        for c in pod_spec(w)["containers"]:
            for e in c.get("env", []):
                for prefix in SETTINGS:
                    if e["name"].startswith(prefix + "_"):
                        out.setdefault(prefix, set()).add(e["name"])
    return out


@pytest.mark.parametrize("prefix", sorted(SETTINGS))
def test_env_vars_are_settings_fields(helm, prefix):
    fields = _fields(prefix)
    if fields is None:
        pytest.skip(f"{SETTINGS[prefix][0]} is not importable here yet")
    unknown, landed = set(), set()
    for variant in VARIANTS:
        for name in _env_names(variant).get(prefix, set()):
            field = name[len(prefix) + 1:].lower()
            if name in PENDING:
                if field in fields:
                    landed.add(name)
            elif field not in fields:
                unknown.add(f"{name} ({variant})")
    assert not unknown, f"env vars no {prefix} setting reads: {sorted(unknown)}"
    assert not landed, f"now real settings, drop them from PENDING: {sorted(landed)}"


def test_cpu_backend_names_are_the_services_defaults(helm):
    for prefix, env in (("VOXMESH_LLM", "VOXMESH_LLM_BACKEND"), ("VOXMESH_TTS", "VOXMESH_TTS_BACKEND")):
        module, cls = SETTINGS[prefix]
        try:
            default = getattr(importlib.import_module(module), cls)().backend
        except ImportError:
            continue
        for variant in ("default", "cpu"):
            (value,) = {e["value"] for w in workloads(render(variant)) for c in pod_spec(w)["containers"]
                        for e in c.get("env", []) if e["name"] == env}
            assert value == default, f"{env}={value} in {variant}, the service knows {default!r}"
