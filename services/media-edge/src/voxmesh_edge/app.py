"""HTTP side of the edge: WHIP signaling (RFC 9725), the demo page, health,
drain and /metrics.

POST /v1/sessions      Content-Type: application/sdp, body = offer
                       -> 201, Location: /v1/sessions/{id}, body = answer,
                          X-Voxmesh-Resume-Token: the session's resume token
                       With `X-Voxmesh-Resume: <token>`: a new PeerConnection
                       for the same conversation (403 for a foreign or stale token)
DELETE /v1/sessions/{id}  -> 200; 404 for an unknown session
DELETE /v1/sessions/{id}?purge=true  with X-Voxmesh-Resume: <token>
                       -> 200: the session is closed and all its data erased
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
import uuid

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from voxmesh.core.logging import session_id_var
from voxmesh.core.metrics import metric, init_service_metrics
from voxmesh.core.settings import from_env
from voxmesh.core.webrtc import configure_ice_hosts, configure_ice_port_range
from voxmesh.v1 import orchestrator_pb2 as opb
from voxmesh_edge import resume
from voxmesh_edge import workers
from voxmesh_edge.routing import FORWARDED_BY, RESUMED_KEY, SESSION_ID_KEY, SessionRouter
from voxmesh_edge.session import EdgeSession, SessionError
from voxmesh_edge.settings import EdgeSettings
from voxmesh_edge.upstreams import Upstreams

log = logging.getLogger(__name__)
STATIC = pathlib.Path(__file__).parent / "static"


class Edge:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.sessions: dict[str, EdgeSession] = {}
        self.draining = False
        self._drain_task: asyncio.Task | None = None
        self.upstreams: Upstreams | None = None
        # Placement and owner forwarding (voxmesh_edge.routing); set up on startup.
        self.router: SessionRouter | None = None

    # ---- helpers ---------------------------------------------------------

    def _error(self, status: int, reason: str, route: str) -> web.Response:
        metric("voxmesh_http_requests_total").labels(route=route, code=str(status)).inc()
        if status >= 500:
            metric("voxmesh_errors_total").labels(where="edge_http").inc()
        log.info("request refused", extra={"route": route, "status": status, "reason": reason})
        return web.json_response({"error": reason}, status=status)

    # ---- routes ---------------------------------------------------------------

    async def create_session(self, request: web.Request) -> web.Response:
        route = "POST /v1/sessions"
        if self.draining:
            return self._error(503, "this edge is draining; retry on another", route)
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            return self._error(415, f"Content-Type must be application/sdp, got {ctype or 'none'!r}", route)
        if request.content_length is not None and request.content_length > self.settings.max_sdp_bytes:
            return self._error(413, f"SDP offer larger than {self.settings.max_sdp_bytes} bytes", route)
        # read(), not content.read(): the router may already have read (and cached)
        # the body to forward it; client_max_size bounds it either way.
        body = await request.read()
        if len(body) > self.settings.max_sdp_bytes:
            return self._error(413, f"SDP offer larger than {self.settings.max_sdp_bytes} bytes", route)
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(400, "SDP offer is not UTF-8 text", route)
        if not offer.startswith("v=0"):
            return self._error(400, "malformed SDP offer: it must start with 'v=0'", route)
        if len(self.sessions) >= self.settings.max_sessions:
            return self._error(503, "edge at capacity", route)
        # A reconnect names its conversation with a resume token (any edge
        # checks it: the secret is shared). The router has placed it here.
        resumed_sid = None
        if token := _resume_token(request):
            try:
                resumed_sid = resume.verify(self.settings.token_secret, token)
            except resume.TokenRefused as exc:
                return self._error(403, str(exc), route)
            exists = await self._conversation_exists(resumed_sid)
            if exists is None:
                return self._error(503, "cannot check the conversation now; retry", route)
            if not exists:
                return self._error(403, "stale resume token: the conversation no longer exists", route)
        # The router chose the id (and claimed it for this edge) before we got here.
        sid = resumed_sid or request.get(SESSION_ID_KEY) or uuid.uuid4().hex
        # A reconnect of a session this edge holds: the new PeerConnection replaces
        # the old one once it is accepted (the old one stays if the offer fails).
        previous = self.sessions.get(sid)
        resumed = previous is not None or bool(request.get(RESUMED_KEY)) or resumed_sid is not None
        session = EdgeSession(sid, self.settings, self.upstreams, agent=request.query.get("agent", ""), resumed=resumed)
        self.sessions[sid] = session

        def undo() -> None:
            if previous is not None:
                self.sessions[sid] = previous
            else:
                self.sessions.pop(sid, None)

        try:
            answer = await session.accept(offer)
        except SessionError as exc:
            undo()
            await session.close()
            return self._error(400, str(exc), route)
        except Exception:
            undo()
            await session.close()
            log.exception("session setup failed")
            return self._error(500, "session setup failed", route)
        finally:
            session_id_var.set(None)
        metric("voxmesh_active_sessions").set(len(self.sessions))
        metric("voxmesh_sessions_total").labels(outcome="created").inc()
        metric("voxmesh_http_requests_total").labels(route=route, code="201").inc()
        asyncio.get_running_loop().create_task(self._reap(session))
        if previous is not None:
            asyncio.get_running_loop().create_task(previous.close())
        log.info("session created", extra={"session": sid})
        return web.Response(
            status=201, text=answer, content_type="application/sdp",
            headers={"Location": f"/v1/sessions/{sid}", "X-Voxmesh-Session": sid, resume.RESPONSE_HEADER: session.resume_token()},
        )

    async def _conversation_exists(self, sid: str) -> bool | None:
        """Whether the conversation's data is still in Redis (None: cannot tell)."""
        redis = self.router.redis if self.router is not None else None
        if redis is None:
            return None
        try:
            return bool(await redis.exists(f"vm:s:{sid}:meta"))
        except Exception as exc:  # Redis unreachable
            log.warning("cannot check a resumed conversation", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None

    async def _reap(self, session: EdgeSession) -> None:
        await session.closed.wait()
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
            metric("voxmesh_active_sessions").set(len(self.sessions))
            metric("voxmesh_sessions_total").labels(outcome="closed").inc()

    async def delete_session(self, request: web.Request) -> web.Response:
        route = "DELETE /v1/sessions"
        sid = request.match_info["sid"]
        if request.query.get("purge", "").lower() in ("1", "true", "yes"):
            return await self._purge(request, sid)
        session = self.sessions.pop(sid, None)
        if session is None:
            return self._error(404, f"no session {sid} on this edge", route)
        await session.close()
        metric("voxmesh_active_sessions").set(len(self.sessions))
        metric("voxmesh_http_requests_total").labels(route=route, code="200").inc()
        return web.json_response({"session_id": sid, "closed": True})

    async def _purge(self, request: web.Request, sid: str) -> web.Response:
        """Close the session and erase all its data. The resume token proves
        the caller owns the conversation (a session id alone is not enough)."""
        route = "DELETE /v1/sessions?purge"
        try:
            if resume.verify(self.settings.token_secret, _resume_token(request)) != sid:
                raise resume.TokenRefused("foreign resume token: it names another session")
        except resume.TokenRefused as exc:
            return self._error(403, f"purge needs the session's resume token: {exc}", route)
        session = self.sessions.pop(sid, None)
        if session is not None:
            await session.close()
            metric("voxmesh_active_sessions").set(len(self.sessions))
        try:
            done = await self.upstreams.orchestrator.DeleteSession(opb.DeleteSessionRequest(session_id=sid), timeout=10, wait_for_ready=True)
        except Exception as exc:
            log.warning("purge failed", extra={"session": sid, "error": f"{type(exc).__name__}: {exc}"})
            return self._error(503, "could not erase the session data now; retry", route)
        metric("voxmesh_http_requests_total").labels(route=route, code="200").inc()
        log.info("session purged", extra={"session": sid, "keys": done.deleted_keys})
        return web.json_response({"session_id": sid, "closed": session is not None, "purged": True, "deleted_keys": done.deleted_keys})

    async def history(self, request: web.Request) -> web.Response:
        """The conversation as stored (what the agent will remember): for the
        CLI's --json report and for debugging a session."""
        import json as _json

        import redis.asyncio as aioredis

        sid = request.match_info["sid"]
        if sid not in self.sessions:
            return self._error(404, f"no session {sid} on this edge", "GET /v1/sessions/history")
        client = aioredis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            raw = await client.lrange(f"vm:s:{sid}:history", 0, -1)
        finally:
            await client.aclose()
        return web.json_response({"session_id": sid, "history": [_json.loads(m) for m in raw]})

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=workers.metrics_text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        # A draining edge stays ready-for-routing: in Kubernetes that keeps it in
        # the EndpointSlice as terminating+serving (a draining member), so peers
        # can still forward its live sessions' signaling to it. It takes no new
        # sessions (the router places them elsewhere) whatever the probe says.
        return web.json_response({"ready": True, "draining": self.draining, "sessions": len(self.sessions)})

    async def drain_route(self, request: web.Request) -> web.Response:
        # The preStop hook and sibling workers call this from inside the pod;
        # it sits on the public signaling port, so nobody else may.
        if request.remote not in ("127.0.0.1", "::1"):
            return self._error(403, "drain is accepted from inside the pod only", "POST /v1/admin/drain")
        asyncio.get_running_loop().create_task(self.drain())
        if self.settings.workers > 1 and FORWARDED_BY not in request.headers and self.router is not None:
            # The pod drains, not just the worker the kernel handed this request to.
            asyncio.get_running_loop().create_task(workers.drain_siblings(self.settings, self.router.name))
        return web.json_response({"draining": True, "sessions": len(self.sessions)})

    async def drain(self) -> None:
        """Take no new sessions; let live ones finish within the grace period,
        moving each client as soon as its conversation is between turns (the
        client reconnects with its resume token to another edge, so the move
        costs a reconnect and no words). Near the end (`drain_mid_reply_s`) a
        client also moves while the agent speaks, once the user is not
        mid-utterance; at the deadline the rest move, and the edge closes."""
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        # A SIGTERM during a drain the preStop hook started waits for it,
        # instead of closing the live sessions at once.
        await asyncio.shield(self._drain_task)

    async def _drain(self) -> None:
        self.draining = True
        if self.router is not None:
            await self.router.draining_changed()
        log.info("draining", extra={"sessions": len(self.sessions), "grace_s": self.settings.drain_grace_s})
        loop = asyncio.get_running_loop()
        grace = self.settings.drain_grace_s
        deadline = loop.time() + grace
        # From here on, the agent speaking no longer holds a client back (its
        # reply resumes on the next edge); only the user's own speech does.
        mid_reply_from = deadline - min(self.settings.drain_mid_reply_s, grace / 2)
        moved: set[str] = set()

        async def move(session: EdgeSession) -> None:
            session.send_client({"type": "move", "reason": "edge draining"})
            await asyncio.sleep(0.5)  # let the move message leave; the client reconnects meanwhile
            await session.close()

        moves: list[asyncio.Task] = []
        while self.sessions and loop.time() < deadline:
            for session in list(self.sessions.values()):
                if session.id in moved:
                    continue
                if session.idle() or (loop.time() >= mid_reply_from and not session.user_mid_turn()):
                    moved.add(session.id)
                    moves.append(loop.create_task(move(session)))
            await asyncio.sleep(0.1)
        for session in list(self.sessions.values()):
            if session.id not in moved:
                moves.append(loop.create_task(move(session)))
        await asyncio.gather(*moves, return_exceptions=True)

    # ---- app ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_sdp_bytes * 2, middlewares=[self._route])
        app.add_routes([
            web.post("/v1/sessions", self.create_session),
            web.delete("/v1/sessions/{sid}", self.delete_session),
            web.get("/v1/sessions/{sid}/history", self.history),
            web.get("/", self.index),
            web.static("/static", STATIC),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.post("/v1/admin/drain", self.drain_route),
        ])
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    @web.middleware
    async def _route(self, request: web.Request, handler) -> web.StreamResponse:
        if self.router is None:
            return await handler(request)
        return await self.router.middleware(request, handler)

    async def _startup(self, app: web.Application) -> None:
        init_service_metrics("media-edge")
        configure_ice_hosts(self.settings.ice_hosts)
        configure_ice_port_range(self.settings.ice_port_min, self.settings.ice_port_max)
        self.upstreams = Upstreams(self.settings)
        self.router = SessionRouter(self.settings, lambda: self.sessions, lambda: self.draining)
        await self.router.start()

    async def _cleanup(self, app: web.Application) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)
        if self.router is not None:
            await self.router.close()
        if self.upstreams:
            await self.upstreams.close()


def _resume_token(request: web.Request) -> str:
    return (request.headers.get(resume.REQUEST_HEADER) or request.headers.get(resume.RESPONSE_HEADER)
            or request.query.get("resume", ""))


async def main() -> None:
    settings = workers.worker_settings(from_env(EdgeSettings, "VOXMESH_EDGE"))
    if settings.workers > 1 and settings.worker_index < 0:
        await workers.supervise(settings)  # this process only runs the workers
        return
    edge = Edge(settings)
    runner = web.AppRunner(edge.app(), access_log=None)
    await runner.setup()
    # Worker processes share the pod's port (the kernel spreads connections) and
    # each has its own, where forwarded signaling for its sessions arrives.
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=settings.workers > 1)
    await site.start()
    if settings.workers > 1:
        await web.TCPSite(runner, settings.host, workers.worker_port(settings.port, settings.worker_index)).start()
    log.info("serving", extra={"port": settings.port, "worker": settings.worker_index})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await edge.drain()
    await runner.cleanup()
