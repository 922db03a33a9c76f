"""Membership: the static list, and the EndpointSlice watcher against a test
double of the Kubernetes API server (k8s_api_double.FakeKubeApi)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import pytest

from voxmesh.core.routing.membership import (
    Backoff,
    EndpointSliceMembership,
    KubeConfig,
    Member,
    MemberSet,
    StaticMembership,
)
from voxmesh.testing.wait import until

from .k8s_api_double import FakeKubeApi, endpoint, endpoint_slice

SVC = "media-edge"


# -- static -------------------------------------------------------------------------


def test_member_parse_and_address():
    assert Member.parse("edge-0=127.0.0.1:8081") == Member("edge-0", "127.0.0.1", 8081)
    assert Member.parse(" 10.0.0.5:80 ") == Member("10.0.0.5:80", "10.0.0.5", 80)
    assert Member.parse("llm-1=[fd00::1]:9000").address == "[fd00::1]:9000"
    assert Member.parse("edge=host.local") == Member("edge", "host.local", None)
    assert Member("x", "fd00::2", 1).address == "[fd00::2]:1"
    with pytest.raises(ValueError):
        Member.parse("edge=")


async def test_static_membership_snapshots_ring_and_notifications():
    m = StaticMembership.from_spec("edge-0=127.0.0.1:8081, edge-1=127.0.0.1:8082,edge-2=127.0.0.1:8083")
    assert m.synced and await m.wait_synced(0.1) is m.current
    assert list(m.current.ready) == ["edge-0", "edge-1", "edge-2"]
    assert m.ring.members == ("edge-0", "edge-1", "edge-2") and not m.ring.draining

    seen: list[MemberSet] = []
    unsubscribe = m.on_change(seen.append)
    snapshots = m.changes()
    assert (await anext(snapshots)) is m.current  # the current set first

    m.drain("edge-1")
    nxt = await asyncio.wait_for(anext(snapshots), 1)
    assert list(nxt.ready) == ["edge-0", "edge-2"] and list(nxt.draining) == ["edge-1"]
    assert m.ring.draining == {"edge-1"} and "edge-1" in m.ring
    assert nxt.get("edge-1") == Member("edge-1", "127.0.0.1", 8082)  # still reachable for its live sessions
    assert seen == [nxt]

    m.set(["edge-0=127.0.0.1:8081", "edge-2=127.0.0.1:8083"], ["edge-1=127.0.0.1:8082"])  # same set: no event
    assert len(seen) == 1
    unsubscribe()
    m.set(["edge-0=127.0.0.1:8081"])
    assert len(seen) == 1

    # Latest wins: two changes before the subscriber looks -> it sees the last one.
    m.set(["a=h:1"])
    m.set(["b=h:2"])
    assert list((await asyncio.wait_for(anext(snapshots), 1)).ready) == ["b"]
    await m.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(snapshots), 1)


def test_backoff_grows_with_jitter_and_caps():
    b = Backoff(base_s=0.5, max_s=8, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    for k, d in enumerate(delays):
        ceiling = min(8, 0.5 * 2**k)
        assert ceiling / 2 <= d <= ceiling
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next() <= 0.5


def test_in_cluster_config(tmp_path):
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "namespace").write_text("voxmesh")
    (tmp_path / "ca.crt").write_text("")
    cfg = KubeConfig.in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, sa_dir=str(tmp_path))
    assert cfg.base_url == "https://10.96.0.1:443" and cfg.namespace == "voxmesh"
    assert cfg.ca_file == str(tmp_path / "ca.crt")
    assert cfg.headers()["Authorization"] == "Bearer tok-1"
    (tmp_path / "token").write_text("tok-2")  # the kubelet rotated it
    assert cfg.headers()["Authorization"] == "Bearer tok-2"
    v6 = KubeConfig.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, sa_dir=str(tmp_path))
    assert v6.base_url == "https://[fd00::1]:6443"
    with pytest.raises(RuntimeError, match="KUBERNETES_SERVICE_HOST"):
        KubeConfig.in_cluster({}, sa_dir=str(tmp_path))
    assert KubeConfig("http://127.0.0.1:1").ssl_context() is None


# -- EndpointSlices ---------------------------------------------------------------------


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    double = FakeKubeApi()
    double.url = await double.start()  # type: ignore[attr-defined]
    try:
        yield double
    finally:
        await double.close()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("sa-token")
    return str(path)


def watcher(api: FakeKubeApi, token_file: str | None = None, **kw) -> EndpointSliceMembership:
    kw.setdefault("port_name", "http")
    return EndpointSliceMembership(
        SVC,
        "voxmesh",
        config=KubeConfig(api.url, token_file=token_file),  # type: ignore[attr-defined]
        backoff=Backoff(base_s=0.01, max_s=0.05),
        **kw,
    )


def three_edges(api: FakeKubeApi) -> None:
    api.put(endpoint_slice("media-edge-abc", SVC, [
        endpoint("media-edge-0", "10.0.0.10"),
        endpoint("media-edge-1", "10.0.0.11", ready=None),  # nil ready counts as ready
        endpoint("media-edge-2", "10.0.0.12", ready=False, serving=True, terminating=True),  # draining
        endpoint("media-edge-3", "10.0.0.13", ready=False, serving=False, terminating=True),  # gone
        endpoint("media-edge-4", "10.0.0.14", ready=False),  # not ready yet
    ]))
    api.put(endpoint_slice("other-xyz", "other-svc", [endpoint("other-0", "10.0.9.9")]))  # another Service


async def test_lists_ready_and_draining_endpoints(api, token_file):
    three_edges(api)
    async with watcher(api, token_file) as m:
        first = await asyncio.wait_for(anext(m.changes()), 5)  # not the empty pre-sync placeholder
        snap = await m.wait_synced(5)
        assert first is snap
        assert snap.ready == {"media-edge-0": Member("media-edge-0", "10.0.0.10", 8080),
                              "media-edge-1": Member("media-edge-1", "10.0.0.11", 8080)}
        assert snap.draining == {"media-edge-2": Member("media-edge-2", "10.0.0.12", 8080)}
        assert m.ring.active == ("media-edge-0", "media-edge-1") and m.ring.draining == {"media-edge-2"}
        await until(lambda: len(api.watches()) == 1)
        lst, w = api.lists()[0], api.watches()[0]
    assert lst["query"]["labelSelector"] == f"kubernetes.io/service-name={SVC}"
    assert lst["authorization"] == "Bearer sa-token"
    assert w["query"]["resourceVersion"] == "1002" and w["query"]["allowWatchBookmarks"] == "true"


async def test_watch_events_update_members_and_notify(api):
    three_edges(api)
    async with watcher(api) as m:
        await m.wait_synced(5)
        snapshots = m.changes()
        await anext(snapshots)

        # A new pod becomes ready (MODIFIED), then a second slice appears (ADDED).
        sl = api.slices["media-edge-abc"]
        sl["endpoints"][4]["conditions"] = {"ready": True}
        api.put(sl)
        snap = await asyncio.wait_for(anext(snapshots), 5)
        assert "media-edge-4" in snap.ready
        api.put(endpoint_slice("media-edge-def", SVC, [endpoint("media-edge-5", "10.0.0.15")]))
        snap = await asyncio.wait_for(anext(snapshots), 5)
        assert set(snap.ready) == {"media-edge-0", "media-edge-1", "media-edge-4", "media-edge-5"}

        # Rolling update: media-edge-0 starts terminating but still serves -> draining.
        sl["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
        api.put(sl)
        snap = await asyncio.wait_for(anext(snapshots), 5)
        assert "media-edge-0" in snap.draining and "media-edge-0" not in snap.ready

        # The slice goes away (DELETED): its endpoints leave.
        api.delete("media-edge-abc")
        snap = await asyncio.wait_for(anext(snapshots), 5)
        assert list(snap.ready) == ["media-edge-5"] and not snap.draining
        assert api.lists().__len__() == 1  # all through the one watch, no relist


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_forces_a_relist(api, as_status):
    api.gone_as_status = as_status
    three_edges(api)
    async with watcher(api) as m:
        await m.wait_synced(5)
        await until(lambda: len(api.watches()) == 1)
        # The watch drops, and while we are away the history we would resume from
        # is compacted: resuming must fail with 410, and only a fresh list is right.
        await api.drop_watches()
        api.delete("media-edge-abc")
        api.put(endpoint_slice("media-edge-new", SVC, [endpoint("media-edge-9", "10.0.0.19")]))
        api.compact()
        await until(lambda: m.lists == 2)
        assert list(m.current.ready) == ["media-edge-9"] and not m.current.draining
        await until(lambda: len(api.watches()) >= 3)  # stale watch -> relist -> new watch
        assert api.watches()[-1]["query"]["resourceVersion"] == str(api.rv)
        # And the watch works again afterwards.
        api.put(endpoint_slice("media-edge-new", SVC, [endpoint("media-edge-9", "10.0.0.19"), endpoint("media-edge-8", "10.0.0.18")]))
        await until(lambda: "media-edge-8" in m.current.ready)


async def test_rbac_denial_logs_one_clear_line_and_recovers(api, caplog):
    caplog.set_level(logging.INFO, logger="voxmesh.core.routing.membership")
    three_edges(api)
    api.deny = True
    async with watcher(api) as m:
        await until(lambda: len(api.requests) >= 4)  # retried several times...
        denied = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(denied) == 1  # ...but said so once
        line = denied[0].getMessage()
        for needed in ("RBAC", "endpointslices", "discovery.k8s.io", "list, watch", "'voxmesh'", "system:serviceaccount"):
            assert needed in line
        assert not m.synced and not m.current.ready

        api.deny = False  # the Role was applied
        await m.wait_synced(5)
        assert set(m.current.ready) == {"media-edge-0", "media-edge-1"}
        assert any("granted again" in r.getMessage() for r in caplog.records)


async def test_errors_back_off_and_keep_the_last_known_members(api, caplog):
    three_edges(api)
    async with watcher(api) as m:
        await m.wait_synced(5)
        before = m.current
        # The API server has an outage: every request fails for a while.
        api.fail_next = 6
        await api.drop_watches()
        # The double counts a failure down when it answers; the watcher logs it a
        # moment later, when the 500 reaches it. Wait for the logs, not the count.
        failures = lambda: sum("list/watch failed" in r.getMessage() for r in caplog.records)  # noqa: E731
        await until(lambda: failures() >= 6)
        assert m.current == before  # an outage must not empty the ring
        # Recovered: resumes watching from the version it had (no relist needed).
        await until(lambda: len(api.watches()) >= 2 and api.fail_next == 0)
        api.put(endpoint_slice("media-edge-def", SVC, [endpoint("media-edge-5", "10.0.0.15")]))
        await until(lambda: "media-edge-5" in m.current.ready)
        assert m.lists == 1


async def test_bookmarks_advance_the_resume_version(api):
    three_edges(api)
    async with watcher(api) as m:
        await m.wait_synced(5)
        await until(lambda: len(api.watches()) == 1)
        api.bookmark()
        await until(lambda: m.resource_version == str(api.rv))
        await api.drop_watches()
        await until(lambda: len(api.watches()) == 2)
        assert api.watches()[1]["query"]["resourceVersion"] == str(api.rv)


async def test_slices_merge_pages_ports_and_address_types(api):
    api.page_size = 1  # exercise list pagination (continue tokens)
    api.put(endpoint_slice("e-1", SVC, [endpoint("media-edge-0", "10.0.0.10")], port=7000))
    # The same pod briefly in two slices (the controller moving it): counted once.
    api.put(endpoint_slice("e-2", SVC, [endpoint("media-edge-0", "10.0.0.10"), endpoint("media-edge-1", "10.0.0.11")], port=7000))
    api.put(endpoint_slice("e-3", SVC, [endpoint("media-edge-2", "fd00::12")], port=7000, address_type="IPv6"))
    api.put(endpoint_slice("e-4", SVC, [endpoint("ext", "edge.example.com")], address_type="FQDN"))
    async with watcher(api, port_name="metrics") as m:
        snap = await m.wait_synced(5)
        assert m.lists == 1 and len(api.lists()) == 4
        assert list(snap.ready) == ["media-edge-0", "media-edge-1", "media-edge-2"]
        assert snap.ready["media-edge-0"].port == 9090  # the named port
        assert snap.ready["media-edge-2"].address == "[fd00::12]:9090"


async def test_an_empty_service_still_counts_as_synced(api):
    seen = []
    async with watcher(api) as m:
        m.on_change(seen.append)
        snap = await asyncio.wait_for(anext(m.changes()), 5)
        assert m.synced and snap == MemberSet() and seen == [snap]
        assert len(m.ring) == 0


async def test_close_cancels_the_watch(api):
    three_edges(api)
    m = watcher(api)
    await m.start()
    await m.wait_synced(5)
    task = m._task
    await m.close()
    assert task is not None and task.done()
    assert m._session is None
