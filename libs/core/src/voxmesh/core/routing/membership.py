"""The current members of a pool (media-edge pods, llm replicas): who is ready
for new sessions and who is draining, with change notifications.

- `StaticMembership`: a fixed list (local runs, tests), e.g. from an env value
  `edge-0=127.0.0.1:8081,edge-1=127.0.0.1:8082`; `set()` changes it at run time.
- `EndpointSliceMembership`: the endpoints of a Kubernetes Service, listed and
  watched from `discovery.k8s.io/v1` EndpointSlices.

Both expose `current` (a `MemberSet`), `ring` (the matching `Ring`), `changes()`
(an async iterator of snapshots, latest-wins) and `on_change(callback)`.

Endpoint conditions (Kubernetes semantics) -> membership:
- ready (nil counts as ready)          -> ready member: takes new sessions
- terminating and serving              -> draining: keeps its live sessions,
                                          gets no new ones (the edge must keep
                                          passing readiness while it drains, or
                                          it vanishes from the slice instead)
- terminating and not serving          -> gone
- not ready, not terminating           -> gone (starting up, or failing probes)

Why a plain aiohttp client and not the `kubernetes` package: we need exactly one
list and one watch of one resource. The official client is synchronous (a watch
pins a thread per pool) and brings requests, urllib3, google-auth,
websocket-client, oauthlib and a large generated model package;
`kubernetes_asyncio` is aiohttp underneath plus the same generated package.
Speaking the REST protocol directly (~200 lines here) keeps every service image
small, stays on the event loop, and puts the behaviours that matter in plain
sight: resourceVersion watch with bookmarks, relist on 410 Gone whether it comes
as a status or as an ERROR event, backoff with jitter, one clear log line when
RBAC denies us, and re-reading the projected service-account token (it rotates).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from voxmesh.core.routing.ring import Ring

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


# -- members ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class Member:
    """A pool member. The ring hashes `name` (a stable pod name), never the
    address, so a pod that restarts with a new IP keeps its sessions' keys."""

    name: str
    host: str
    port: int | None = None

    @property
    def address(self) -> str:
        """`host:port` (IPv6 in brackets), or the bare host when there is no port."""
        host = self.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).version == 6:
                host = f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"

    @classmethod
    def parse(cls, spec: str) -> Member:
        """`name=host:port`, `host:port` (the name is then `host:port`),
        `[v6]:port`, or `name=host`."""
        spec = spec.strip()
        name, sep, addr = spec.partition("=")
        if not sep:
            name, addr = "", spec
        addr = addr.strip()
        port: int | None = None
        if addr.startswith("["):
            host, _, rest = addr[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif addr.count(":") == 1:
            host, _, p = addr.partition(":")
            port = int(p)
        else:
            host = addr
        if not host:
            raise ValueError(f"no host in member spec {spec!r}")
        member = cls(name.strip(), host, port)
        return member if member.name else dataclasses.replace(member, name=member.address)


@dataclasses.dataclass(frozen=True)
class MemberSet:
    """One snapshot of a pool: ready members and draining ones, by name."""

    ready: Mapping[str, Member] = dataclasses.field(default_factory=dict)
    draining: Mapping[str, Member] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, ready: Iterable[Member] = (), draining: Iterable[Member] = ()) -> MemberSet:
        r = {m.name: m for m in sorted(ready)}
        d = {m.name: m for m in sorted(draining) if m.name not in r}
        return cls(r, d)

    def get(self, name: str) -> Member | None:
        """The member called `name`, ready or draining (e.g. to forward to the
        recorded owner of a live session on a draining pod)."""
        return self.ready.get(name) or self.draining.get(name)

    def ring(self) -> Ring:
        return Ring([*self.ready, *self.draining], draining=self.draining)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemberSet) and dict(self.ready) == dict(other.ready) and dict(self.draining) == dict(other.draining)

    def __hash__(self) -> int:  # pragma: no cover - snapshots are compared, rarely hashed
        return hash((tuple(self.ready.items()), tuple(self.draining.items())))


# -- the abstraction --------------------------------------------------------------


class Membership:
    """Holds the latest MemberSet and tells subscribers when it changes.

    Notifications are latest-wins: a slow subscriber skips intermediate
    snapshots instead of queueing them, since only the current set matters.
    """

    def __init__(self) -> None:
        self._current = MemberSet()
        self._ring = Ring()
        self._version = 0
        self._waiters: set[asyncio.Event] = set()
        self._callbacks: list[Callable[[MemberSet], None]] = []
        self._synced = asyncio.Event()
        self._closed = False

    @property
    def current(self) -> MemberSet:
        return self._current

    @property
    def ring(self) -> Ring:
        """The ring of the current snapshot (rebuilt once per change)."""
        return self._ring

    @property
    def synced(self) -> bool:
        """True once the first full member list has been loaded."""
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> MemberSet:
        await asyncio.wait_for(self._synced.wait(), timeout)
        return self._current

    def on_change(self, callback: Callable[[MemberSet], None]) -> Callable[[], None]:
        """Call `callback(snapshot)` on every change (on the event loop; keep it
        quick). Returns a function that unsubscribes."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def changes(self) -> AsyncIterator[MemberSet]:
        """The current snapshot (once the first full list is in: never the empty
        placeholder before it), then each new one; ends when closed."""
        seen = -1
        while not self._closed:
            if self.synced and self._version != seen:
                seen = self._version
                yield self._current
                continue
            event = asyncio.Event()
            self._waiters.add(event)
            try:
                await event.wait()
            finally:
                self._waiters.discard(event)

    def _publish(self, snapshot: MemberSet, *, synced: bool = True) -> None:
        first = synced and not self._synced.is_set()
        if synced:
            self._synced.set()
        # The first sync is news even when the set is empty (a Service with no
        # endpoints yet): subscribers waiting for it must hear about it.
        if snapshot == self._current and not first:
            return
        self._current = snapshot
        self._ring = snapshot.ring()
        self._version += 1
        log.info(
            "membership changed",
            extra={"ready": len(snapshot.ready), "draining": len(snapshot.draining), "members": ",".join(snapshot.ready)},
        )
        for event in self._waiters:
            event.set()
        for cb in list(self._callbacks):
            try:
                cb(snapshot)
            except Exception:
                log.exception("membership callback failed")

    async def start(self) -> None:
        """Begin tracking members (no-op for a static list)."""

    async def close(self) -> None:
        self._closed = True
        for event in self._waiters:
            event.set()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class StaticMembership(Membership):
    """A fixed member list; `set()` replaces it (e.g. a local drain)."""

    def __init__(self, ready: Iterable[Member | str] = (), draining: Iterable[Member | str] = ()) -> None:
        super().__init__()
        self.set(ready, draining)

    @classmethod
    def from_spec(cls, spec: str) -> StaticMembership:
        """From a comma-separated list, e.g. env `edge-0=127.0.0.1:8081,edge-1=127.0.0.1:8082`."""
        return cls([part for part in spec.split(",") if part.strip()])

    def set(self, ready: Iterable[Member | str], draining: Iterable[Member | str] = ()) -> None:
        as_member = lambda m: m if isinstance(m, Member) else Member.parse(m)  # noqa: E731
        self._publish(MemberSet.of(map(as_member, ready), map(as_member, draining)))

    def drain(self, *names: str) -> None:
        cur = self.current
        moving = [cur.ready[n] for n in names if n in cur.ready]
        self.set([m for n, m in cur.ready.items() if n not in names], [*cur.draining.values(), *moving])


# -- Kubernetes -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KubeConfig:
    """How to reach the API server. `in_cluster()` in a pod; a plain `base_url`
    (no token) for a local test double."""

    base_url: str
    token_file: str | None = None
    token: str | None = None
    ca_file: str | None = None
    namespace: str | None = None

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str] | None = None, sa_dir: str = SA_DIR) -> KubeConfig:
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not in a cluster: KUBERNETES_SERVICE_HOST is not set")
        if ":" in host:  # IPv6 service IP
            host = f"[{host}]"
        namespace = None
        with contextlib.suppress(OSError):
            with open(os.path.join(sa_dir, "namespace")) as f:
                namespace = f.read().strip() or None
        return cls(
            base_url=f"https://{host}:{port}",
            token_file=os.path.join(sa_dir, "token"),
            ca_file=os.path.join(sa_dir, "ca.crt"),
            namespace=namespace,
        )

    def headers(self) -> dict[str, str]:
        # Re-read on every request: projected service-account tokens rotate (~1 h).
        token = self.token
        if self.token_file:
            with contextlib.suppress(OSError):
                with open(self.token_file) as f:
                    token = f.read().strip()
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https"):
            return None
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()


class Backoff:
    """Exponential backoff with jitter: attempt k waits a random time in
    [d/2, d], d = min(max_s, base_s * 2**k). Half fixed so retries really slow
    down; half random so a fleet of pods that lost the API server together does
    not hammer it together when it comes back."""

    def __init__(self, base_s: float = 0.5, max_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.base_s, self.max_s = base_s, max_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        d = min(self.max_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return d / 2 + self.rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0


class _Gone(Exception):
    """The resourceVersion is too old (410): list again."""


class _ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status, self.message, self.reason = status, message, reason


async def _api_error(resp: aiohttp.ClientResponse) -> _ApiError:
    body = await resp.text()
    message, reason = body[:500], resp.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        status = json.loads(body)  # a metav1.Status
        message, reason = status.get("message", message), status.get("reason", reason)
    return _ApiError(resp.status, message, reason)


class EndpointSliceMembership(Membership):
    """Members = endpoints of Service `service` in `namespace`, from its
    EndpointSlices (label kubernetes.io/service-name=<service>), listed once and
    then watched. On errors the last known set is kept (an API server outage
    must not empty the ring) and the watch is retried with backoff."""

    def __init__(
        self,
        service: str,
        namespace: str | None = None,
        *,
        config: KubeConfig | None = None,
        port_name: str | None = None,
        watch_timeout_s: int = 290,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self.config = config or KubeConfig.in_cluster()
        self.service = service
        self.namespace = namespace or self.config.namespace or "default"
        self.port_name = port_name
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or Backoff()
        self.resource_version: str | None = None
        self.lists = 0  # full lists done (1 + relists), for tests and debugging
        self._slices: dict[str, dict[str, Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._denied = False

    @property
    def _url(self) -> str:
        return f"{self.config.base_url.rstrip('/')}/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"

    @property
    def _selector(self) -> str:
        return f"kubernetes.io/service-name={self.service}"

    async def start(self) -> None:
        if self._task is not None:
            return
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.config.ssl_context() or False))
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"endpointslices-{self.service}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().close()

    # The loop: list, then watch from the list's resourceVersion until the watch
    # ends (server timeout: watch again from the last version seen) or fails.
    async def _run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    self.backoff.reset()
                started = time.monotonic()
                events = await self._watch()
                if events or time.monotonic() - started > 1.0:
                    self.backoff.reset()
                    continue
                # A watch that ends at once with nothing in it is an error in disguise
                # (a proxy closing idle streams); don't spin on it.
                delay = self.backoff.next()
                log.warning("endpointslice watch ended immediately, retrying", extra={"retry_in_s": round(delay, 3)})
            except _Gone:
                # Our version was compacted away: only a fresh list is consistent.
                log.info("endpointslice watch expired (410 Gone), relisting", extra={"service": self.service})
                self.resource_version = None
                if self.backoff.attempt == 0:
                    self.backoff.attempt = 1  # relist now; a second 410 in a row backs off
                    continue
                delay = self.backoff.next()
            except _ApiError as exc:
                delay = self.backoff.next()
                if exc.status == 403:
                    self._log_denied(exc, delay)
                else:
                    log.warning(
                        "endpointslice list/watch failed",
                        extra={"status": exc.status, "error": exc.message, "retry_in_s": round(delay, 3)},
                    )
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
                delay = self.backoff.next()
                log.warning(
                    "endpointslice list/watch failed",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_in_s": round(delay, 3)},
                )
            except Exception:
                # Anything else (a malformed object we did not foresee) must not end
                # the watcher for the life of the process: log it and start over.
                delay = self.backoff.next()
                log.exception("endpointslice watcher error, relisting", extra={"retry_in_s": round(delay, 3)})
                self.resource_version = None
            await asyncio.sleep(delay)

    def _log_denied(self, exc: _ApiError, delay: float) -> None:
        # One line per denial episode, not one per retry: the fix is a Role, not a retry.
        if self._denied:
            log.debug("endpointslice access still denied", extra={"retry_in_s": round(delay, 3)})
            return
        self._denied = True
        log.error(
            f"Kubernetes RBAC denied list/watch of endpointslices: the pod's service account needs a Role in "
            f"namespace {self.namespace!r} with apiGroups [discovery.k8s.io], resources [endpointslices], "
            f"verbs [list, watch] (and a RoleBinding to it); until then membership stays at its last known set "
            f"and retries with backoff. API server said: {exc.message}",
            extra={"service": self.service, "namespace": self.namespace, "status": 403},
        )

    async def _list(self) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=30)
        slices: dict[str, dict[str, Any]] = {}
        cont: str | None = None
        while True:  # paginated with `continue`, which large clusters may use
            params = {"labelSelector": self._selector, "limit": "500"}
            if cont:
                params["continue"] = cont
            async with self._session.get(self._url, params=params, headers=self.config.headers(), timeout=timeout) as resp:
                if resp.status == 410:
                    raise _Gone()
                if resp.status != 200:
                    raise await _api_error(resp)
                body = await resp.json(content_type=None)
            for item in body.get("items") or []:
                slices[item["metadata"]["name"]] = item
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        self.lists += 1
        self._slices = slices
        self.resource_version = meta.get("resourceVersion")
        if self._denied:
            log.info("endpointslice access granted again", extra={"service": self.service})
            self._denied = False
        self._publish(self._snapshot())

    async def _watch(self) -> int:
        """Stream events into the member set; returns how many arrived."""
        assert self._session is not None
        params = {
            "labelSelector": self._selector,
            "watch": "1",
            "resourceVersion": self.resource_version or "",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        # No total timeout (a watch is long-lived); a read gap longer than the
        # server-side timeout means the connection is dead.
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=self.watch_timeout_s + 30)
        events = 0
        async with self._session.get(self._url, params=params, headers=self.config.headers(), timeout=timeout) as resp:
            if resp.status == 410:
                raise _Gone()
            if resp.status != 200:
                raise await _api_error(resp)
            buf = b""
            # Split lines ourselves: one event can be a large slice (up to 1000
            # endpoints), beyond aiohttp's readline limit.
            async for chunk in resp.content.iter_any():
                buf += chunk
                while True:
                    line, nl, rest = buf.partition(b"\n")
                    if not nl:
                        break
                    buf = rest
                    if line.strip():
                        self._on_event(json.loads(line))
                        events += 1
            if buf.strip():
                self._on_event(json.loads(buf))
                events += 1
        return events

    def _on_event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone()
            raise _ApiError(int(code or 500), obj.get("message", ""), obj.get("reason", ""))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            # Only a newer version to resume from; no object change.
            self.resource_version = rv or self.resource_version
            return
        name = obj["metadata"]["name"]
        if kind in ("ADDED", "MODIFIED"):
            self._slices[name] = obj
        elif kind == "DELETED":
            self._slices.pop(name, None)
        else:
            log.debug("ignoring watch event", extra={"type": kind})
            return
        if rv:
            self.resource_version = rv
        self._publish(self._snapshot())

    def _snapshot(self) -> MemberSet:
        ready: dict[str, Member] = {}
        draining: dict[str, Member] = {}
        # Slices in name order so the result does not depend on event order when an
        # endpoint briefly appears in two slices (the controller moving it).
        for _, sl in sorted(self._slices.items()):
            if sl.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
                continue  # FQDN slices name no pod
            port = self._port(sl.get("ports") or [])
            for ep in sl.get("endpoints") or []:
                addresses = ep.get("addresses") or []
                if not addresses:
                    continue
                cond = ep.get("conditions") or {}
                ready_c = cond.get("ready")
                terminating = cond.get("terminating") is True
                serving = cond.get("serving")
                serving = (ready_c is not False) if serving is None else serving
                ref = ep.get("targetRef") or {}
                name = ref.get("name") if ref.get("kind", "Pod") == "Pod" and ref.get("name") else None
                name = name or ep.get("hostname") or addresses[0]
                member = Member(name, addresses[0], port)
                if not terminating and ready_c is not False:
                    ready.setdefault(name, member)
                elif terminating and serving:
                    draining.setdefault(name, member)
        return MemberSet.of(ready.values(), (m for n, m in draining.items() if n not in ready))

    def _port(self, ports: list[dict[str, Any]]) -> int | None:
        for p in ports:
            if self.port_name is None or p.get("name") == self.port_name:
                return p.get("port")
        return None
