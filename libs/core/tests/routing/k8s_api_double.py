"""TEST DOUBLE of the Kubernetes API server, for EndpointSlices only.

No API server can run on this machine, so this speaks just enough of the
protocol for `EndpointSliceMembership`: 

- GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=...
  -> an EndpointSliceList with metadata.resourceVersion (pages with limit/continue).
- the same with watch=1&resourceVersion=N -> a chunked stream of JSON lines
  {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}, every event
  after N, then new ones as they happen, until timeoutSeconds.
- a version older than the retained history -> 410 Gone, as an ERROR event in a
  200 stream (what kube-apiserver does) or, with `gone_as_status`, as HTTP 410.
- `deny` -> 403 with the Status body kube-apiserver sends for an RBAC denial.
- `fail_next` -> that many 500s.

It is a double, not an emulator: one resource, equality label selectors only,
no field selectors, no auth beyond recording the Authorization header.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

PATH = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def endpoint(pod: str, ip: str, *, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    return {"addresses": [ip], "conditions": cond, "hostname": pod,
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "voxmesh"}}


def endpoint_slice(name: str, service: str, endpoints: list[dict[str, Any]], *, port: int = 8080,
                   port_name: str = "http", address_type: str = "IPv4") -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": "voxmesh", "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}, {"name": "metrics", "port": 9090, "protocol": "TCP"}],
    }


class FakeKubeApi:
    """Test double of kube-apiserver's EndpointSlice list/watch (see module doc)."""

    def __init__(self, namespace: str = "voxmesh") -> None:
        self.namespace = namespace
        self.rv = 1000
        self.slices: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.oldest_rv = self.rv  # watching from an older version -> 410
        self.deny = False
        self.fail_next = 0
        self.gone_as_status = False
        self.page_size: int | None = None
        self.requests: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._generation = 0  # bumped by drop_watches: open watches end
        self._server: TestServer | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return str(self._server.make_url("")).rstrip("/")

    async def close(self) -> None:
        await self.drop_watches()
        if self._server is not None:
            await self._server.close()

    # -- state changes (each one is an event with a new resourceVersion) -----------

    def put(self, obj: dict[str, Any]) -> None:
        obj = copy.deepcopy(obj)
        name = obj["metadata"]["name"]
        kind = "MODIFIED" if name in self.slices else "ADDED"
        self._record(kind, obj)
        self.slices[name] = obj

    def delete(self, name: str) -> None:
        obj = self.slices.pop(name)
        self._record("DELETED", obj)

    def bookmark(self) -> None:
        self.rv += 1
        self.history.append((self.rv, "BOOKMARK", {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                   "metadata": {"resourceVersion": str(self.rv)}}))
        self._notify()

    def compact(self) -> None:
        """Forget history: watches from any version before now get 410."""
        self.history.clear()
        self.oldest_rv = self.rv

    async def drop_watches(self) -> None:
        """End every open watch (as a server-side timeout or a restart would)."""
        self._generation += 1
        async with self._changed:
            self._changed.notify_all()

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, copy.deepcopy(obj)))
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    # -- HTTP -------------------------------------------------------------------------

    def watches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["watch"]]

    def lists(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if not r["watch"]]

    def _matches(self, obj: dict[str, Any], selector: str) -> bool:
        labels = obj.get("metadata", {}).get("labels", {})
        for term in filter(None, selector.split(",")):
            key, _, value = term.partition("=")
            if labels.get(key) != value:
                return False
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        watch = q.get("watch") in ("1", "true")
        self.requests.append({"watch": watch, "query": dict(q), "authorization": request.headers.get("Authorization")})
        if request.match_info["namespace"] != self.namespace:
            return web.json_response(status(404, "NotFound", "namespace not found"), status=404)
        if self.deny:
            verb = "watch" if watch else "list"
            msg = (f'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:{self.namespace}:media-edge" '
                   f'cannot {verb} resource "endpointslices" in API group "discovery.k8s.io" in the namespace "{self.namespace}"')
            return web.json_response(status(403, "Forbidden", msg), status=403)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response(status(500, "InternalError", "etcdserver: request timed out"), status=500)
        selector = q.get("labelSelector", "")
        if watch:
            return await self._watch(request, selector, int(q.get("resourceVersion") or self.rv),
                                     float(q.get("timeoutSeconds", "1800")))
        items = sorted((s for s in self.slices.values() if self._matches(s, selector)), key=lambda s: s["metadata"]["name"])
        start = int(q.get("continue") or 0)
        limit = self.page_size or len(items) or 1
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                  "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, selector: str, since: int, timeout_s: float) -> web.StreamResponse:
        if since < self.oldest_rv:
            msg = f"too old resource version: {since} ({self.oldest_rv})"
            if self.gone_as_status:
                return web.json_response(status(410, "Expired", msg), status=410)
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(json.dumps({"type": "ERROR", "object": status(410, "Expired", msg)}).encode() + b"\n")
            await resp.write_eof()
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        generation = self._generation
        deadline = asyncio.get_running_loop().time() + timeout_s
        sent = since
        while True:
            if self._generation != generation:
                break
            for rv, kind, obj in [h for h in self.history if h[0] > sent]:
                sent = rv
                if kind == "BOOKMARK" or self._matches(obj, selector):
                    await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            async with self._changed:
                # Re-check under the lock: an event recorded while we were writing
                # must not wait for the next one to be noticed.
                if self._generation == generation and not any(h[0] > sent for h in self.history):
                    try:
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
        await resp.write_eof()
        return resp
