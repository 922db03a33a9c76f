"""What the rendered manifests must say, variant by variant: GPUs where they
belong, probes, PDBs, the drain wiring, autoscaler targets, security contexts,
resources, the media path switch, RBAC, Redis and the wiring between tiers."""

from __future__ import annotations

import re

import pytest

import chartlib
from chartlib import GPU_RESOURCE, NAMESPACE, VARIANTS, component, env_of, named, of_kind, pod_spec, render, workloads

pytestmark = pytest.mark.chart

COMPONENTS = ["media-edge", "stt", "llm", "tts", "orchestrator"]
GRPC = {"stt": ("VOXMESH_STT", 50051), "llm": ("VOXMESH_LLM", 50052), "tts": ("VOXMESH_TTS", 50053), "orchestrator": ("VOXMESH_ORCHESTRATOR", 50054)}
GPU_VARIANTS = [v for v, files in VARIANTS.items() if "values-gpu.yaml" in files]
ALL = sorted(VARIANTS)


def workload(docs, name: str) -> dict:
    kind = "StatefulSet" if name in ("media-edge", "redis") else "Deployment"
    return named(docs, kind, component(name))


def container(docs, name: str) -> dict:
    return pod_spec(workload(docs, name))["containers"][0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def fqdn(name: str) -> str:
    return f"{component(name)}.{NAMESPACE}.svc.cluster.local"


# ------------------------------------------------------------------------ GPUs


@pytest.mark.parametrize("variant", GPU_VARIANTS)
def test_gpu_pools_request_gpus(helm, variant):
    docs = render(variant)
    for name in ("llm", "tts"):
        res = container(docs, name)["resources"]
        assert int(res["limits"][GPU_RESOURCE]) >= 1, name
        assert res["requests"][GPU_RESOURCE] == res["limits"][GPU_RESOURCE], f"{name}: GPU request != limit"
        spec = pod_spec(workload(docs, name))
        assert spec["nodeSelector"], f"{name}: GPU pods need a nodeSelector"
        assert any(t.get("key") == GPU_RESOURCE for t in spec["tolerations"]), f"{name}: no GPU toleration"
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container(docs, name)["volumeMounts"]
        assert vols["models"]["persistentVolumeClaim"]["readOnly"] is True
        mounts = {m["name"]: m for m in container(docs, name)["volumeMounts"]}
        assert mounts["models"]["readOnly"] is True
        assert container(docs, name)["image"].split(":")[0].endswith("-gpu")
    env = env_of(container(docs, "llm"))
    assert env["VOXMESH_LLM_BACKEND"]["value"] == "vllm"
    for key in ("VOXMESH_LLM_VLLM_MODEL", "VOXMESH_LLM_VLLM_GPU_MEMORY_UTILIZATION", "VOXMESH_LLM_VLLM_MAX_MODEL_LEN", "VOXMESH_LLM_VLLM_ENABLE_PREFIX_CACHING"):
        assert env[key]["value"], key
    assert env["VOXMESH_LLM_VLLM_MODEL"]["value"].startswith("/models")
    tts = env_of(container(docs, "tts"))
    assert tts["VOXMESH_TTS_BACKEND"]["value"] == "coqui"
    assert tts["VOXMESH_TTS_COQUI_MODEL_DIR"]["value"].startswith("/models")


@pytest.mark.parametrize("variant", ALL)
def test_gpus_only_where_they_belong(helm, variant):
    docs = render(variant)
    gpu_pools = {"llm", "tts"} if variant in GPU_VARIANTS else set()
    for w in workloads(docs):
        for c in pod_spec(w).get("containers", []) + pod_spec(w).get("initContainers", []):
            res = c.get("resources", {})
            has = GPU_RESOURCE in res.get("limits", {}) or GPU_RESOURCE in res.get("requests", {})
            comp = w["metadata"]["labels"]["app.kubernetes.io/component"]
            assert has == (comp in gpu_pools), f"{w['kind']}/{w['metadata']['name']}: GPU={has}"
    assert GPU_RESOURCE not in str(container(docs, "stt")["resources"])


@pytest.mark.parametrize("variant", ["default", "cpu"])
def test_cpu_backends(helm, variant):
    docs = render(variant)
    assert env_of(container(docs, "llm"))["VOXMESH_LLM_BACKEND"]["value"] == "llama_cpp"
    assert env_of(container(docs, "tts"))["VOXMESH_TTS_BACKEND"]["value"] == "piper"
    assert not any(v["name"] == "models" for v in pod_spec(workload(docs, "llm"))["volumes"])


# --------------------------------------------------------------- probes, PDBs


@pytest.mark.parametrize("variant", ALL)
def test_probes(helm, variant):
    docs = render(variant)
    for name, (_prefix, port) in GRPC.items():
        c = container(docs, name)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{name}.{probe}"
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in c["ports"]
    edge = container(docs, "media-edge")
    assert edge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert edge["readinessProbe"]["failureThreshold"] == 1, "a draining edge must leave the endpoints at once"
    assert edge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert edge["startupProbe"]["httpGet"]["path"] == "/healthz"
    for w in workloads(docs):
        if w["metadata"].get("annotations", {}).get("helm.sh/hook") == "test":
            continue
        for c in pod_spec(w)["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, f"{w['metadata']['name']}/{c['name']}"


@pytest.mark.parametrize("variant", ALL)
def test_pdbs_cover_every_pool(helm, variant):
    docs = render(variant)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for name in COMPONENTS:
        labels = workload(docs, name)["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PDBs"
        spec = matching[0]["spec"]
        assert "maxUnavailable" in spec or "minAvailable" in spec


# ---------------------------------------------------------------------- drain


@pytest.mark.parametrize("variant", ALL)
def test_edge_drain_wiring(helm, variant):
    docs = render(variant)
    sts = workload(docs, "media-edge")
    c = container(docs, "media-edge")
    env = env_of(c)
    drain = float(env["VOXMESH_EDGE_DRAIN_GRACE_S"]["value"])
    # the mid-reply window lies inside the grace: it moves clients earlier, never later
    assert 0 <= float(env["VOXMESH_EDGE_DRAIN_MID_REPLY_S"]["value"]) <= drain
    script = "\n".join(c["lifecycle"]["preStop"]["exec"]["command"])
    port = env["VOXMESH_EDGE_PORT"]["value"]
    assert f'base = "http://127.0.0.1:{port}"' in script
    assert 'Request(base + "/v1/admin/drain", method="POST")' in script
    # the preStop waits for the sessions up to the drain grace (+1 s) read from the env
    assert 'os.environ.get("VOXMESH_EDGE_DRAIN_GRACE_S"' in script and "< grace + 1" in script
    min_wait = float(re.search(r"min_wait = ([\d.]+)", script).group(1))
    assert min_wait >= 1, "endpoint removal needs a moment before SIGTERM"
    grace = pod_spec(sts)["terminationGracePeriodSeconds"]
    assert grace > drain + 1 + min_wait, f"terminationGracePeriodSeconds {grace} <= drain {drain} + preStop wait"
    compile(script, "preStop", "exec")
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


@pytest.mark.parametrize("variant", ALL)
def test_grpc_drain_wiring(helm, variant):
    docs = render(variant)
    grace_env = {"stt": "VOXMESH_STT_GRACE_S", "llm": "VOXMESH_LLM_GRACE_S", "tts": "VOXMESH_TTS_GRACE_S",
                 "orchestrator": "VOXMESH_ORCHESTRATOR_DRAIN_GRACE_S"}
    for name, var in grace_env.items():
        c = container(docs, name)
        drain = float(env_of(c)[var]["value"])
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[0] == "sleep"
        grace = pod_spec(workload(docs, name))["terminationGracePeriodSeconds"]
        assert grace > drain + float(cmd[1]), f"{name}: grace {grace} <= drain {drain} + preStop {cmd[1]}"


# ----------------------------------------------------------------- autoscaling


@pytest.mark.parametrize("variant", ALL)
def test_autoscaler_targets(helm, variant):
    docs = render(variant)
    scaled = {}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = named(docs, ref["kind"], ref["name"])
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        scaled[ref["name"]] = ("hpa", hpa, target)
    for so in of_kind(docs, "ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        target = named(docs, ref["kind"], ref["name"])
        assert ref["name"] not in scaled, f"{ref['name']} has both an HPA and a ScaledObject"
        scaled[ref["name"]] = ("keda", so, target)
    for name in ("stt", "llm", "tts", "orchestrator"):
        assert component(name) in scaled, f"{name} is not autoscaled in {variant}"
    for _name, (_engine, _obj, target) in scaled.items():
        assert "replicas" not in target["spec"], f"{target['metadata']['name']}: replicas fights the autoscaler"
        for c in pod_spec(target)["containers"]:
            assert c["resources"]["requests"].get("cpu"), "CPU utilization needs a CPU request"


def _hpa_metrics(hpa) -> dict:
    out = {}
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Resource":
            out[m["resource"]["name"]] = m["resource"]["target"]["averageUtilization"]
        elif m["type"] == "Pods":
            out[m["pods"]["metric"]["name"]] = float(m["pods"]["target"]["averageValue"])
    return out


def test_hpa_engine_targets(helm):
    docs = render("default")
    v = {"stt": {"cpu": 70, "voxmesh_stt_active_streams": 6.0}, "llm": {"voxmesh_llm_queue_depth": 2.0},
         "tts": {"voxmesh_tts_active_streams": 4.0}, "orchestrator": {"cpu": 70, "voxmesh_orchestrator_sessions": 200.0}}
    for name, metrics in v.items():
        assert _hpa_metrics(named(docs, "HorizontalPodAutoscaler", component(name))) == metrics
        behavior = named(docs, "HorizontalPodAutoscaler", component(name))["spec"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    gpu = render("gpu-adapter")
    assert _hpa_metrics(named(gpu, "HorizontalPodAutoscaler", component("media-edge"))) == {"voxmesh_active_sessions": 50.0}
    assert named(gpu, "HorizontalPodAutoscaler", component("media-edge"))["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"


def test_keda_engine_targets(helm):
    docs = render("gpu-keda")
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    llm = named(docs, "ScaledObject", component("llm"))
    (trigger,) = llm["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == f'sum(voxmesh_llm_queue_depth{{namespace="{NAMESPACE}",job="{component("llm")}"}})'
    assert trigger["metadata"]["threshold"] == "2"
    assert llm["spec"]["minReplicaCount"] == 2 and llm["spec"]["maxReplicaCount"] == 8
    stt = named(docs, "ScaledObject", component("stt"))
    assert {t["type"] for t in stt["spec"]["triggers"]} == {"cpu", "prometheus"}
    # the per-pool engine override: only llm on KEDA
    mixed = render("external-redis")
    assert [s["metadata"]["name"] for s in of_kind(mixed, "ScaledObject")] == [component("llm")]
    assert component("llm") not in [h["metadata"]["name"] for h in of_kind(mixed, "HorizontalPodAutoscaler")]


def test_keda_queries_select_what_the_monitors_label(helm):
    """KEDA sums by job=<component>: the monitors must set exactly that job label."""
    docs = render("gpu-keda")
    for mon in of_kind(docs, "ServiceMonitor"):
        (ep,) = mon["spec"]["endpoints"]
        assert {"action": "replace", "targetLabel": "job", "replacement": mon["metadata"]["name"]} in ep["relabelings"]
    adapter = render("gpu-adapter")
    assert len(of_kind(adapter, "PodMonitor")) == 5


# ----------------------------------------------------- security and resources


@pytest.mark.parametrize("variant", ALL)
def test_non_root_and_locked_down(helm, variant):
    for w in workloads(render(variant)):
        spec = pod_spec(w)
        psc = spec.get("securityContext", {})
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", w["metadata"]["name"]
        for c in spec["containers"]:
            csc = c.get("securityContext", {})
            where = f"{w['metadata']['name']}/{c['name']}"
            assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert csc.get("runAsUser", psc.get("runAsUser", 0)) != 0, where
            assert csc.get("allowPrivilegeEscalation") is False, where
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert csc.get("readOnlyRootFilesystem") is True, where
            assert not csc.get("privileged"), where


@pytest.mark.parametrize("variant", ALL)
def test_resources_everywhere(helm, variant):
    for w in workloads(render(variant)):
        for c in pod_spec(w)["containers"]:
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{w['metadata']['name']}/{c['name']} {kind}"


@pytest.mark.parametrize("variant", ALL)
def test_stt_decode_threads_fit_its_cpu_request(helm, variant):
    """Whisper runs decode_lanes decodes of cpu_threads threads at once: more
    threads than the CPUs requested would make every decode (and the end of turn
    that waits on it) slower, not faster."""
    c = container(render(variant), "stt")
    env = env_of(c)
    threads = int(env["VOXMESH_STT_DECODE_LANES"]["value"]) * int(env["VOXMESH_STT_CPU_THREADS"]["value"])
    cpu = c["resources"]["requests"]["cpu"]
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert 1 <= threads <= cores, f"{variant}: {threads} decode threads on {cpu} CPUs requested"
    assert env["OMP_NUM_THREADS"]["value"] == env["VOXMESH_STT_CPU_THREADS"]["value"]


@pytest.mark.parametrize("variant", ALL)
def test_images_are_pinned(helm, variant):
    for w in workloads(render(variant)):
        for c in pod_spec(w)["containers"]:
            repo, _, tag = c["image"].rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, c["image"]


# ---------------------------------------------------------------- media path


def test_edge_on_host_network(helm):
    docs = render("gpu")
    spec = pod_spec(workload(docs, "media-edge"))
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    required = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required[0]["topologyKey"] == "kubernetes.io/hostname", "one edge pod per node: they bind the same ports"
    env = env_of(container(docs, "media-edge"))
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["VOXMESH_EDGE_ICE_HOSTS"]["value"] == "$(HOST_IP)"
    assert int(env["VOXMESH_EDGE_ICE_PORT_MIN"]["value"]) < int(env["VOXMESH_EDGE_ICE_PORT_MAX"]["value"])
    assert "VOXMESH_EDGE_TURN_URL" not in env


def test_edge_behind_turn(helm):
    docs = render("gpu-turn")
    spec = pod_spec(workload(docs, "media-edge"))
    assert not spec.get("hostNetwork")
    env = env_of(container(docs, "media-edge"))
    assert env["VOXMESH_EDGE_TURN_URL"]["value"].startswith("turn:")
    secret = named(docs, "Secret", f"{component('media-edge')}-turn")
    for key in ("VOXMESH_EDGE_TURN_USERNAME", "VOXMESH_EDGE_TURN_PASSWORD"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert "value" not in env["VOXMESH_EDGE_TURN_PASSWORD"], "the TURN password must not be inlined"
    assert named(docs, "Service", component("media-edge"))["spec"]["type"] == "LoadBalancer"
    named(docs, "Ingress", component("media-edge"))


@pytest.mark.parametrize("variant", ALL)
def test_edge_membership_and_upstreams(helm, variant):
    docs = render(variant)
    sts = workload(docs, "media-edge")
    env = env_of(container(docs, "media-edge"))
    assert env["VOXMESH_EDGE_MEMBERSHIP"]["value"] == "kubernetes"
    assert env["VOXMESH_EDGE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["VOXMESH_EDGE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    headless = named(docs, "Service", env["VOXMESH_EDGE_SERVICE_NAME"]["value"])
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert selects(headless["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    for var, name in (("VOXMESH_EDGE_STT_TARGET", "stt"), ("VOXMESH_EDGE_TTS_TARGET", "tts"), ("VOXMESH_EDGE_ORCHESTRATOR_TARGET", "orchestrator")):
        port = GRPC[name][1]
        assert env[var]["value"] == f"dns:///{fqdn(name)}:{port}"
        svc = named(docs, "Service", component(name))
        assert svc["spec"]["clusterIP"] == "None", f"{name}: round_robin needs a headless Service"
        assert any(p["port"] == port for p in svc["spec"]["ports"])
    orch = env_of(container(docs, "orchestrator"))
    assert orch["VOXMESH_ORCHESTRATOR_LLM_TARGETS"]["value"] == f"{fqdn('llm')}:50052"
    assert named(docs, "Service", component("llm"))["spec"]["clusterIP"] == "None"


# ------------------------------------------------------------------------ RBAC


@pytest.mark.parametrize("variant", ["default", "gpu-turn"])
def test_rbac_for_endpointslices(helm, variant):
    docs = render(variant)
    for name in ("media-edge", "orchestrator"):
        sa = pod_spec(workload(docs, name))["serviceAccountName"]
        assert pod_spec(workload(docs, name))["automountServiceAccountToken"] is True
        bindings = [b for b in of_kind(docs, "RoleBinding") if any(s["name"] == sa for s in b["subjects"])]
        assert bindings, f"{name}: no RoleBinding"
        role = named(docs, "Role", bindings[0]["roleRef"]["name"])
        (rule,) = role["rules"]
        assert rule["apiGroups"] == ["discovery.k8s.io"] and rule["resources"] == ["endpointslices"]
        assert set(rule["verbs"]) == {"get", "list", "watch"}
    for name in ("stt", "llm", "tts"):
        assert pod_spec(workload(docs, name))["automountServiceAccountToken"] is False
    assert not of_kind(docs, "ClusterRole"), "namespace-scoped access is enough"


# ----------------------------------------------------------------------- Redis


@pytest.mark.parametrize("variant", ["default", "gpu"])
def test_redis_in_cluster(helm, variant):
    docs = render(variant)
    sts = workload(docs, "redis")
    conf = named(docs, "ConfigMap", component("redis"))["data"]["redis.conf"]
    assert "appendonly yes" in conf and "appendfsync everysec" in conf
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = pod_spec(sts)["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert c["args"] == ["--requirepass", "$(REDIS_PASSWORD)"]
    for name, var in (("orchestrator", "VOXMESH_ORCHESTRATOR_REDIS_URL"), ("media-edge", "VOXMESH_EDGE_REDIS_URL")):
        env = env_of(container(docs, name))
        assert env[var]["value"] == f"redis://:$(REDIS_PASSWORD)@{fqdn('redis')}:6379/0"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == component("redis")
    named(docs, "Secret", component("redis"))


def test_redis_external(helm):
    docs = render("external-redis")
    assert not [w for w in workloads(docs) if "redis" in w["metadata"]["name"]]
    env = env_of(container(docs, "orchestrator"))
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "voxmesh-redis-credentials", "key": "password"}
    assert env["VOXMESH_ORCHESTRATOR_REDIS_URL"]["value"].startswith("rediss://default:$(REDIS_PASSWORD)@")


@pytest.mark.parametrize("variant", ALL)
def test_env_references_are_defined_before_use(helm, variant):
    """Kubernetes expands $(VAR) only from variables defined earlier in the list."""
    for w in workloads(render(variant)):
        for c in pod_spec(w)["containers"]:
            defined = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    assert ref in defined, f"{w['metadata']['name']}: {e['name']} uses $({ref}) before it is defined"
                defined.add(e["name"])
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(c.get("args", []))):
                assert ref in defined


# ------------------------------------------------- Services, policies, monitors


@pytest.mark.parametrize("variant", ALL)
def test_services_select_pods_and_ports_exist(helm, variant):
    docs = render(variant)
    pods = [(w["spec"]["template"]["metadata"]["labels"], pod_spec(w)) for w in workloads(docs) if w["kind"] != "Pod"]
    for svc in of_kind(docs, "Service"):
        matches = [(labels, spec) for labels, spec in pods if selects(svc["spec"]["selector"], labels)]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} workloads"
        ports = {p["name"] for c in matches[0][1]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {p['targetPort']}"


@pytest.mark.parametrize("variant", ["default", "gpu-turn"])
def test_network_policies_between_tiers(helm, variant):
    docs = render(variant)
    pols = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")}
    for name in COMPONENTS + ["redis"]:
        assert component(name) in pols, name

    def grpc_peers(name):
        (rule,) = [r for r in pols[component(name)]["spec"]["ingress"] if r["ports"][0]["port"] == "grpc"]
        return [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule.get("from", [])]

    assert grpc_peers("llm") == ["orchestrator"]
    if variant == "gpu-turn":  # edge on the pod network: selected by labels
        for name in ("stt", "tts", "orchestrator"):
            assert grpc_peers(name) == ["media-edge"]
    edge = pols[component("media-edge")]["spec"]["ingress"]
    udp = [r for r in edge if r["ports"][0]["protocol"] == "UDP"]
    assert udp and udp[0]["ports"][0]["endPort"] > udp[0]["ports"][0]["port"]


@pytest.mark.parametrize("variant", ["default", "gpu-adapter"])
def test_every_pool_is_scraped(helm, variant):
    docs = render(variant)
    monitors = of_kind(docs, "ServiceMonitor") + of_kind(docs, "PodMonitor")
    for name in COMPONENTS:
        labels = workload(docs, name)["spec"]["template"]["metadata"]["labels"]
        (mon,) = [m for m in monitors if m["metadata"]["name"] == component(name)]
        sel = mon["spec"]["selector"]["matchLabels"]
        endpoints = mon["spec"].get("endpoints") or mon["spec"]["podMetricsEndpoints"]
        port = endpoints[0]["port"]
        if mon["kind"] == "ServiceMonitor":
            svcs = [s for s in of_kind(docs, "Service") if selects(sel, s["metadata"]["labels"])]
            assert len(svcs) == 1, f"{name}: ServiceMonitor matches {len(svcs)} Services (double scrapes)"
            assert port in {p["name"] for p in svcs[0]["spec"]["ports"]}
        else:
            assert selects(sel, labels)
            assert port in {p["name"] for p in container(docs, name)["ports"]}
        assert endpoints[0]["path"] == "/metrics"
