"""Which edge serves a session, and getting every signaling request there.

A session lives on exactly one edge (its PeerConnection is in that process), yet
its signaling may land on any edge: the load balancer in front of the edges
knows nothing about sessions. This module is an aiohttp middleware that:

- places a NEW session (POST /v1/sessions) with `Ring.assign` over the members
  that take new sessions, using the live loads from the owner records
  (`SessionOwners.loads`), claims it in Redis for the chosen edge, and has that
  edge answer the offer;
- sends every later request about a session (DELETE /v1/sessions/{id}, any
  /v1/sessions/{id}/..., a reconnect POST that names an existing session) to
  the edge recorded as its owner in Redis, never to where the ring says now;
- keeps this edge's owner leases alive (`refresh_many` on a timer), releases a
  lease when its session ends, and takes a session over (`replace`) for a
  reconnect when its recorded owner left the membership or stopped answering.

Proxy, not redirect (the reasoning is in docs/capacity.md): the edge that got
the request forwards it to the owner over plain HTTP inside the cluster and
relays the answer. Clients keep one public URL (the Service / load balancer),
need no route to individual pods, and the WHIP resource URL (Location) stays
valid on every edge. A forwarded request carries `X-Voxmesh-Forwarded-By`; the
receiver never forwards it again (at most one hop, so two edges that briefly
disagree about the membership cannot bounce a request between them).

Draining: an edge that drains takes no new sessions but keeps its live ones and
keeps answering signaling for them. It tells its peers at once through a Redis
flag (`vm:m:{member}:draining`, refreshed with a TTL while it drains), which
the placement merges into the ring on top of what the membership says (a
Kubernetes endpoint that is terminating but serving is draining too). A create
that lands on a draining edge is forwarded like any other.

Redis down: placement falls back to the edge that got the request, and owner
lookups find nothing, so requests are served where they land. A single edge
(the local default) therefore keeps working without Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import redis.asyncio as aioredis
import redis.exceptions
from aiohttp import web

from voxmesh.core.metrics import metric
from voxmesh.core.routing.membership import EndpointSliceMembership, Member, Membership, MemberSet, StaticMembership
from voxmesh.core.routing.owners import SessionOwners
from voxmesh.core.routing.ring import EmptyRingError, Ring
from voxmesh_edge import resume as resume_mod
from voxmesh_edge import workers
from voxmesh_edge.settings import EdgeSettings

log = logging.getLogger(__name__)

FORWARDED_BY = "X-Voxmesh-Forwarded-By"
FORWARD_TOKEN = "X-Voxmesh-Forward-Token"
# On a forwarded create: the session id the first edge chose (so a retry on the
# next member reuses it) and the owner it expects to replace, if any.
PLACE_SESSION = "X-Voxmesh-Place-Session"
PLACE_REPLACES = "X-Voxmesh-Place-Replaces"
# On every session response: the member that served it (clients and tests read it).
SERVED_BY = "X-Voxmesh-Edge"
RESUME_HEADER = "X-Voxmesh-Resume"

# The request key a create handler reads its session id from.
SESSION_ID_KEY = web.RequestKey("voxmesh_session_id", str)
# Set when the create continues an existing session (a resume token named it).
RESUMED_KEY = web.RequestKey("voxmesh_resumed", bool)

_SESSION_PATH = re.compile(r"^/v1/sessions/([^/]+)(?:/.*)?$")
_REQUEST_HEADERS = ("Content-Type", "Accept", "Authorization", "If-Match", "If-None-Match", RESUME_HEADER, "X-Voxmesh-Resume-Token")
_RESPONSE_HEADERS = ("Content-Type", "Location", "X-Voxmesh-Session", "X-Voxmesh-Resume-Token", "ETag", "Link", "Accept-Patch",
                     "Retry-After", SERVED_BY)
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


class _LiveSession(Protocol):
    closed: asyncio.Event

    async def close(self) -> None: ...


def _token(request: web.Request) -> str:
    return (request.headers.get(RESUME_HEADER) or request.headers.get(resume_mod.RESPONSE_HEADER)
            or request.query.get("resume") or "")


def resume_session_id(request: web.Request) -> str | None:
    """The session a reconnect POST continues, or None for a new session.

    The resume token (voxmesh_edge.resume) is `{session_id}.{expiry}.{mac}`, sent
    as the `X-Voxmesh-Resume` header or the `resume` query parameter; the session
    id comes first so routing can find the owner. The proof is checked before
    the router acts on it (and again by the edge that serves it)."""
    sid = _token(request).split(".", 1)[0].strip()
    return sid if re.fullmatch(r"[A-Za-z0-9_-]{1,128}", sid) else None


def build_membership(settings: EdgeSettings) -> Membership:
    """`static`: VOXMESH_EDGE_MEMBERS (`name=host:port,...`), or just this edge
    when empty (one edge, zero configuration). `kubernetes`: the ready and
    draining endpoints of VOXMESH_EDGE_SERVICE_NAME's EndpointSlices."""
    if settings.membership == "kubernetes":
        return EndpointSliceMembership(settings.service_name, settings.namespace or None, port_name=settings.service_port_name or None)
    if settings.membership != "static":
        raise ValueError(f"VOXMESH_EDGE_MEMBERSHIP must be 'static' or 'kubernetes', not {settings.membership!r}")
    if not settings.members:
        return StaticMembership([Member(settings.pod_name, settings.advertise_host, settings.port)])
    membership = StaticMembership(settings.members)
    if membership.current.get(settings.pod_name) is None:
        raise ValueError(
            f"VOXMESH_EDGE_POD_NAME={settings.pod_name!r} is not one of VOXMESH_EDGE_MEMBERS "
            f"({', '.join(membership.current.ready)}): peers could not forward to this edge"
        )
    return membership


class SessionRouter:
    """Placement, owner forwarding and owner leases for one edge process."""

    def __init__(
        self,
        settings: EdgeSettings,
        sessions: Callable[[], Mapping[str, _LiveSession]],
        is_draining: Callable[[], bool],
        *,
        membership: Membership | None = None,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self.settings = settings
        # A pod's worker processes are members in their own right (voxmesh_edge.workers).
        self.name = workers.member_name(settings.pod_name, settings.worker_index, settings.workers)
        self._view_src: MemberSet | None = None
        self._view = MemberSet()
        self._view_ring = Ring()
        self._sessions = sessions
        self._is_draining = is_draining
        self.membership = membership or build_membership(settings)
        self.redis = redis or aioredis.from_url(
            settings.redis_url, decode_responses=True,
            socket_timeout=settings.redis_timeout_s, socket_connect_timeout=settings.redis_timeout_s,
        )
        self.owners = SessionOwners(self.redis, ttl_s=settings.owner_ttl_s)
        self.resume_session_id: Callable[[web.Request], str | None] = resume_session_id
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._leased: set[str] = set()
        # Members a forward just failed to reach: skipped for new sessions for a
        # while, so one dead pod (still listed in a static membership, or not yet
        # out of the EndpointSlice) does not cost every new session a timeout.
        self._suspect: dict[str, float] = {}
        self._redis_ok = True
        self._forwards = metric("voxmesh_edge_forwards_total")

    # ---- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        await self.membership.start()
        # Forwarded signaling is small and rare next to media; a short connect
        # timeout makes a dead peer cost little before the next one is tried.
        timeout = aiohttp.ClientTimeout(total=self.settings.forward_timeout_s, connect=self.settings.forward_connect_timeout_s)
        self._http = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        # A restarted pod keeps its name: clear a drain flag its previous life left.
        await self.draining_changed()
        self._spawn(self._lease_loop(), "owner-leases")

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        # Our sessions are being closed with the process: give their records back
        # now instead of letting them linger until the TTL.
        with contextlib.suppress(*_REDIS_ERRORS):
            await asyncio.wait_for(
                asyncio.gather(*(self.owners.release(s, self.name) for s in list(self._leased))), self.settings.redis_timeout_s
            )
        if self._http is not None:
            await self._http.close()
        await self.membership.close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- the middleware --------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if request.path == "/v1/sessions" and request.method == "POST":
            return await self._route_create(request, handler)
        match = _SESSION_PATH.match(request.path)
        if match is None:
            return await handler(request)
        return await self._route_session(request, handler, match.group(1))

    def _forwarded(self, request: web.Request) -> bool:
        if FORWARDED_BY not in request.headers:
            return False
        secret = self.settings.forward_secret
        # Without a shared secret the header is trusted; what a client gains by
        # faking it is being served by the edge it reached, never another session.
        return not secret or request.headers.get(FORWARD_TOKEN) == secret

    async def _route_session(self, request: web.Request, handler, sid: str) -> web.StreamResponse:
        if self._forwarded(request) or sid in self._sessions():
            return self._mark(await handler(request))
        owner = await self._owner_of(sid)
        if owner is None or owner == self.name:
            return self._mark(await handler(request))
        member = self._members().get(owner)
        if member is None:
            # Its edge left the membership: the session died with it (a reconnect
            # POST would take it over; a DELETE or a query has nothing to reach).
            return self._mark(await handler(request))
        resp = await self._forward(request, await request.read(), member)
        if resp is None:
            metric("voxmesh_errors_total").labels(where="edge_forward").inc()
            return web.json_response({"error": f"the edge that owns session {sid} ({owner}) is unreachable"}, status=502)
        return resp

    async def _route_create(self, request: web.Request, handler) -> web.StreamResponse:
        if self._forwarded(request):
            return await self._create_here(request, handler)
        resume = self.resume_session_id(request)
        previous: str | None = None
        if resume:
            request[RESUMED_KEY] = True
            # Check the proof before touching the owner record: a foreign token must
            # not move (or forward) anyone's session. With a shared secret any edge
            # can check it (voxmesh_edge.resume).
            try:
                resume_mod.verify(self.settings.token_secret, _token(request))
            except resume_mod.TokenRefused as exc:
                return self._mark(web.json_response({"error": str(exc)}, status=403))
            owner = await self._owner_of(resume)
            if (owner == self.name or resume in self._sessions()) and not self._is_draining():
                request[SESSION_ID_KEY] = resume
                return await self._serve_new(request, handler, resume, previous=None)
            if owner is not None and owner != self.name:
                member = self._members().get(owner)
                if member is not None and not self._is_suspect(owner) and not await self._member_draining(owner):
                    # The owner is alive as far as we know: the reconnect is its
                    # business (it replaces the PeerConnection on the same session).
                    resp = await self._forward(request, await request.read(), member)
                    if resp is not None and not (resp.status == 503 and resp.headers.get(SERVED_BY) == owner):
                        return resp
            # Its edge is gone from the membership, not answering, or draining (a
            # moved client reconnects): place it again and take it over.
            previous = owner
            sid = resume
        else:
            sid = uuid.uuid4().hex
        body = await request.read()
        tried: set[str] = set()
        for target in await self._placement(sid):
            if target in tried:
                continue
            tried.add(target)
            if target == self.name:
                if self._is_draining():
                    continue
                request[SESSION_ID_KEY] = sid
                return await self._serve_new(request, handler, sid, previous)
            member = self._members().get(target)
            if member is None:
                continue
            resp = await self._forward(request, body, member, place=sid, replaces=previous)
            if resp is None or (resp.status == 503 and resp.headers.get(SERVED_BY) == target):
                # Unreachable, or it refused (draining, at capacity): next choice.
                continue
            return resp
        metric("voxmesh_errors_total").labels(where="edge_placement").inc()
        return web.json_response({"error": "no edge can take a new session now"}, status=503, headers={"Retry-After": "1"})

    async def _create_here(self, request: web.Request, handler) -> web.StreamResponse:
        """A create another edge placed here: serve it with the id it chose."""
        resume = self.resume_session_id(request)
        if resume:
            request[RESUMED_KEY] = True
        sid = request.headers.get(PLACE_SESSION) or resume or uuid.uuid4().hex
        if self._is_draining():
            return self._mark(web.json_response({"error": "this edge is draining"}, status=503))
        if not resume and await self._conversation_exists(sid):
            # A new session never takes the id of a stored conversation (only a
            # resume token may reattach one).
            return self._mark(web.json_response({"error": "session id in use"}, status=409))
        request[SESSION_ID_KEY] = sid
        return await self._serve_new(request, handler, sid, request.headers.get(PLACE_REPLACES) or None)

    async def _serve_new(self, request: web.Request, handler, sid: str, previous: str | None) -> web.StreamResponse:
        """Claim `sid` for this edge (taking it over from `previous` if that edge
        is gone), answer the offer, and hold the lease while the session lives."""
        owner = await self._claim(sid, previous)
        if owner is not None and owner != self.name:
            # Lost a race (two reconnects, or a peer claimed it first).
            member = self._members().get(owner)
            if member is not None and not self._forwarded(request):
                resp = await self._forward(request, await request.read(), member)
                if resp is not None:
                    return resp
            return self._mark(web.json_response({"error": f"session {sid} is owned by {owner}"}, status=409))
        resp = await handler(request)
        if resp.status == 201:
            self._hold(sid)
        elif owner == self.name and sid not in self._sessions():
            with contextlib.suppress(*_REDIS_ERRORS):
                await self.owners.release(sid, self.name)
        return self._mark(resp)

    def _mark(self, resp: web.StreamResponse) -> web.StreamResponse:
        if SERVED_BY not in resp.headers:
            resp.headers[SERVED_BY] = self.name
        return resp

    # ---- placement -----------------------------------------------------------

    async def _placement(self, sid: str) -> list[str]:
        """Members to try for a new session, best first: the bounded-load choice,
        then the session's hash order; this edge last if nobody else can."""
        ring = await self._ring()
        order: list[str] = []
        try:
            loads = await self.owners.loads(ring.active)
            self._redis_up()
            order.append(ring.assign(sid, loads, self.settings.balance_factor))
        except EmptyRingError:
            pass
        except _REDIS_ERRORS as exc:
            self._redis_down(exc)
            # No loads, no records: serve here rather than guess.
            return [self.name]
        order += [m for m in ring.owners(sid) if m not in order]
        now = time.monotonic()
        fresh = [m for m in order if self._suspect.get(m, 0) <= now]
        return [*fresh, *(m for m in order if m not in fresh), self.name]

    async def _ring(self) -> Ring:
        self._members()
        ring = self._view_ring if self.settings.workers > 1 else self.membership.ring
        if self._is_draining() and self.name in ring and self.name not in ring.draining:
            ring = ring.drain(self.name)
        if len(ring.active) <= 1:
            return ring
        try:
            flags = await self.redis.mget([self._drain_key(m) for m in ring.active])
        except _REDIS_ERRORS:
            return ring
        draining = [m for m, f in zip(ring.active, flags) if f]
        return ring.drain(*draining) if draining else ring

    async def _member_draining(self, member: str) -> bool:
        if member in self._members().draining:
            return True
        try:
            return bool(await self.redis.exists(self._drain_key(member)))
        except _REDIS_ERRORS:
            return False

    def _members(self) -> MemberSet:
        """The current members as the ring sees them: pods, or with several
        worker processes per pod, their workers (rebuilt once per change)."""
        cur = self.membership.current
        if self.settings.workers <= 1:
            return cur
        if cur is not self._view_src:
            self._view_src = cur
            self._view = workers.expand(cur, self.settings.workers, self.settings.port)
            self._view_ring = self._view.ring()
        return self._view

    def _is_suspect(self, member: str) -> bool:
        return self._suspect.get(member, 0) > time.monotonic()

    def _drain_key(self, member: str) -> str:
        return f"{self.owners.prefix}:m:{member}:draining"

    # ---- forwarding --------------------------------------------------------------

    async def _forward(
        self, request: web.Request, body: bytes, member: Member, *, place: str | None = None, replaces: str | None = None
    ) -> web.Response | None:
        """Send the request to `member` and relay its answer; None when the member
        cannot be reached (the caller decides what that means)."""
        assert self._http is not None
        headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
        headers[FORWARDED_BY] = self.name
        if self.settings.forward_secret:
            headers[FORWARD_TOKEN] = self.settings.forward_secret
        if place:
            headers[PLACE_SESSION] = place
        if replaces:
            headers[PLACE_REPLACES] = replaces
        port = member.port or self.settings.port
        url = f"http://{Member(member.name, member.host, port).address}{request.rel_url}"
        started = time.perf_counter()
        try:
            async with self._http.request(request.method, url, data=body or None, headers=headers, allow_redirects=False) as r:
                payload = await r.read()
                out = web.Response(status=r.status, body=payload)
                for h in _RESPONSE_HEADERS:
                    if h in r.headers:
                        out.headers[h] = r.headers[h]
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._suspect[member.name] = time.monotonic() + self.settings.suspect_s
            self._forwards.labels(outcome="unreachable").inc()
            log.warning("forward failed", extra={"to": member.name, "path": request.path, "error": f"{type(exc).__name__}: {exc}"})
            return None
        self._suspect.pop(member.name, None)
        self._forwards.labels(outcome="ok").inc()
        log.info("forwarded", extra={"to": member.name, "path": request.path, "status": out.status,
                                     "ms": round((time.perf_counter() - started) * 1000, 1)})
        return out

    # ---- owner records -------------------------------------------------------------

    async def _owner_of(self, sid: str) -> str | None:
        try:
            owner = await self.owners.owner_of(sid)
        except _REDIS_ERRORS as exc:
            self._redis_down(exc)
            return None
        self._redis_up()
        return owner

    async def _conversation_exists(self, sid: str) -> bool:
        try:
            return bool(await self.redis.exists(f"{self.owners.prefix}:s:{sid}:meta"))
        except _REDIS_ERRORS as exc:
            self._redis_down(exc)
            return False

    async def _claim(self, sid: str, previous: str | None) -> str | None:
        """Owner after claiming `sid` for this edge; None when Redis is down."""
        try:
            if previous and previous != self.name:
                owner = await self.owners.replace(sid, previous, self.name)
            else:
                owner = await self.owners.claim(sid, self.name)
        except _REDIS_ERRORS as exc:
            self._redis_down(exc)
            return None
        self._redis_up()
        return owner

    def _hold(self, sid: str) -> None:
        """Keep the lease while the session lives, give it back when it ends."""
        self._leased.add(sid)
        session = self._sessions().get(sid)
        if session is not None:
            self._spawn(self._release_when_closed(sid, session), f"lease-{sid[:8]}")

    async def _release_when_closed(self, sid: str, session: _LiveSession) -> None:
        await session.closed.wait()
        if self._sessions().get(sid) not in (None, session):
            return  # a reconnect replaced the session object: the lease is still in use
        self._leased.discard(sid)
        try:
            await self.owners.release(sid, self.name)
        except _REDIS_ERRORS as exc:
            self._redis_down(exc)  # the lease expires on its own within the TTL

    async def _lease_loop(self) -> None:
        period = self.settings.owner_refresh_s or self.settings.owner_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._refresh_leases(period)
            except _REDIS_ERRORS as exc:
                self._redis_down(exc)
            except Exception:
                log.exception("owner lease refresh failed")

    async def _refresh_leases(self, period: float) -> None:
        if self._is_draining():
            # Tell peers now, and for a little longer than one period, so the flag
            # outlives a late tick but not a crashed edge.
            await self.redis.set(self._drain_key(self.name), "1", px=int(period * 3000))
        live = self._sessions()
        ended = self._leased - set(live)
        for sid in ended:
            self._leased.discard(sid)
            await self.owners.release(sid, self.name)
        ids = [s for s in live if s in self._leased]
        if not ids:
            return
        results = await self.owners.refresh_many(ids, self.name)
        self._redis_up()
        for sid, ok in results.items():
            if ok:
                continue
            # Lost the record: expired (Redis restarted, a long stall) or taken over
            # by a reconnect elsewhere. Claim it back unless someone else has it.
            owner = await self.owners.claim(sid, self.name)
            if owner != self.name and (session := live.get(sid)) is not None:
                log.warning("session taken over by another edge; closing it here", extra={"session": sid, "owner": owner})
                self._leased.discard(sid)
                self._spawn(session.close(), f"close-{sid[:8]}")

    async def draining_changed(self) -> None:
        """Publish this edge's drain at once (the lease loop keeps it alive)."""
        period = self.settings.owner_refresh_s or self.settings.owner_ttl_s / 3
        try:
            if self._is_draining():
                await self.redis.set(self._drain_key(self.name), "1", px=int(period * 3000))
            else:
                await self.redis.delete(self._drain_key(self.name))
        except _REDIS_ERRORS as exc:
            self._redis_down(exc)

    def _redis_down(self, exc: BaseException) -> None:
        if self._redis_ok:
            log.warning("redis unreachable: serving requests where they land", extra={"error": f"{type(exc).__name__}: {exc}"})
        self._redis_ok = False

    def _redis_up(self) -> None:
        if not self._redis_ok:
            log.info("redis reachable again")
        self._redis_ok = True


def debug_state(router: SessionRouter) -> dict[str, Any]:
    """For /v1/admin/routing: what this edge believes."""
    cur = router._members()
    return {
        "member": router.name,
        "ready": sorted(cur.ready),
        "draining": sorted(cur.draining),
        "leases": len(router._leased),
        "suspect": sorted(m for m, t in router._suspect.items() if t > time.monotonic()),
        "redis_ok": router._redis_ok,
    }
