"""Resume tokens: the client's proof that it may reattach a PeerConnection to
an existing conversation, on any edge.

    token = "{session_id}.{expiry unix s}.{mac}"
    mac   = base64url(HMAC-SHA256(secret, "voxmesh-resume:v1:{session_id}.{expiry}"))[:22]

The session id comes first so the router (voxmesh_edge.routing) can find the
owner without the secret; the owner edge checks the proof. Every edge shares
the secret (VOXMESH_EDGE_TOKEN_SECRET), so a token from a lost edge is good on
the others. A token is refused as foreign when its MAC does not check out (not
issued by this deployment, or edited to name another session), and as stale
when it has expired or its conversation no longer exists in Redis (expired by
the session TTL, or erased).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time

log = logging.getLogger(__name__)

# Clients send the token back in this request header (or a `resume` query parameter).
REQUEST_HEADER = "X-Voxmesh-Resume"
# The edge returns the token of a new session in this response header.
RESPONSE_HEADER = "X-Voxmesh-Resume-Token"

_SID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_process_secret: bytes | None = None


class TokenRefused(Exception):
    """The token cannot resume a session; the message is safe to return."""


def _secret(configured: str) -> bytes:
    """The shared secret; without one, a per-process random secret (tokens then
    only work on this edge process, so cross-edge resume needs the setting)."""
    global _process_secret
    if configured:
        return configured.encode()
    if _process_secret is None:
        _process_secret = secrets.token_bytes(32)
        log.warning("VOXMESH_EDGE_TOKEN_SECRET is not set: resume tokens only work on this edge process")
    return _process_secret


def _mac(secret: bytes, sid: str, expiry: int) -> str:
    digest = hmac.new(secret, f"voxmesh-resume:v1:{sid}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:22]


def issue(secret: str, sid: str, ttl_s: float, now: float | None = None) -> str:
    expiry = int((now if now is not None else time.time()) + ttl_s)
    return f"{sid}.{expiry}.{_mac(_secret(secret), sid, expiry)}"


def verify(secret: str, token: str, now: float | None = None) -> str:
    """The session id the token resumes; TokenRefused (foreign or expired) otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not _SID.fullmatch(parts[0]) or not parts[1].isdigit():
        raise TokenRefused("foreign resume token: malformed")
    sid, expiry = parts[0], int(parts[1])
    if not hmac.compare_digest(parts[2], _mac(_secret(secret), sid, expiry)):
        raise TokenRefused("foreign resume token: not issued by this deployment for this session")
    if expiry < (now if now is not None else time.time()):
        raise TokenRefused("stale resume token: expired")
    return sid
