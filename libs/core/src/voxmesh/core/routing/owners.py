"""Who owns each live session, recorded in Redis.

The ring says where a NEW session should go; this record says where a LIVE one
is. Every later request (a DELETE, an ICE restart, a reconnect) follows the
record, so live sessions never move when members join, leave or drain.

Keys:
- `vm:s:{session_id}:owner` = member name, with a TTL. The owning edge refreshes
  it while the session lives (`refresh_many`, every ttl/3 or so); when the pod
  dies the record expires and a reconnect may be claimed elsewhere (or taken
  over at once with `replace` when the membership shows the owner is gone).
- `vm:m:{member}:sessions` = sorted set of that member's session ids scored by
  their expiry time (ms, Redis clock). It gives every process the same view of
  live sessions per member (`loads`) for the ring's bounded-load placement, and
  it heals itself: entries past their expiry are trimmed, so a crashed member's
  count drops to zero without anyone decrementing it.

Each operation is one Lua script, so the owner key and the member's set change
together and the check-then-set steps (claim, refresh, release, replace) are
atomic. The scripts touch the owner key and member sets in one call, so under
Redis Cluster they would need a shared hash tag; voxmesh runs one Redis (with
replicas/Sentinel for HA), where this holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

# Time comes from Redis (TIME) inside the scripts, not from each client, so member
# processes with skewed clocks still agree on which entries have expired.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] owner key, KEYS[2] member set; ARGV member, ttl_ms, session_id.
# Returns the owner after the call: ARGV[1] if it won (or already owned it).
_CLAIM = _NOW + """
local ttl = tonumber(ARGV[2])
local cur = ARGV[1]
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl) then
  cur = redis.call('GET', KEYS[1])
  if cur ~= ARGV[1] then return cur end
  -- Same member again (a retried offer): idempotent, extends the lease.
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ttl)
return cur
"""

# KEYS[1] member set, KEYS[2..] owner keys; ARGV member, ttl_ms, session ids (in KEYS order).
# Returns a 1/0 per session: 0 = no longer owned by this member (expired, taken over).
_REFRESH = _NOW + """
local ttl = tonumber(ARGV[2])
local out = {}
for i = 2, #KEYS do
  local sid = ARGV[i + 1]
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('ZADD', KEYS[1], now + ttl, sid)
    out[#out + 1] = 1
  else
    redis.call('ZREM', KEYS[1], sid)
    out[#out + 1] = 0
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
"""

# KEYS[1] owner key, KEYS[2] member set; ARGV member, session_id. 1 if released.
_RELEASE = """
redis.call('ZREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS[1] owner key, KEYS[2] old member set, KEYS[3] new member set;
# ARGV old, new, ttl_ms, session_id. Returns the owner after the call.
_REPLACE = _NOW + """
local ttl = tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[1])
if cur ~= false and cur ~= ARGV[1] and cur ~= ARGV[2] then return cur end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[3], ttl)
return ARGV[2]
"""

# KEYS member sets. Returns live entries per set.
_LOADS = _NOW + """
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  out[i] = redis.call('ZCARD', KEYS[i])
end
return out
"""

# One script call runs atomically and blocks Redis meanwhile; keep each call short.
_BATCH = 500


def _str(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class SessionOwners:
    """Session -> owning member, in Redis. Works with clients made with or
    without `decode_responses`."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: float = 30.0, prefix: str = "vm") -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._claim = redis.register_script(_CLAIM)
        self._refresh = redis.register_script(_REFRESH)
        self._release = redis.register_script(_RELEASE)
        self._replace = redis.register_script(_REPLACE)
        self._loads = redis.register_script(_LOADS)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:s:{session_id}:owner"

    def member_key(self, member: str) -> str:
        return f"{self.prefix}:m:{member}:sessions"

    def _ttl_ms(self, ttl_s: float | None) -> int:
        return max(1, int((self.ttl_s if ttl_s is None else ttl_s) * 1000))

    async def claim(self, session_id: str, member: str, ttl_s: float | None = None) -> str:
        """Record `member` as the owner unless someone already is (SET NX + TTL).
        Returns the owner after the call: `member` when it won (or already owned
        the session, whose lease is then extended), else the existing owner, to
        which the caller forwards."""
        owner = await self._claim(
            keys=[self.key(session_id), self.member_key(member)], args=[member, self._ttl_ms(ttl_s), session_id]
        )
        return _str(owner)  # type: ignore[return-value]

    async def owner_of(self, session_id: str) -> str | None:
        return _str(await self.redis.get(self.key(session_id)))

    async def refresh(self, session_id: str, member: str, ttl_s: float | None = None) -> bool:
        """Extend the lease if `member` still owns the session; False means it
        lost it (expired, or taken over) and should end the session."""
        return (await self.refresh_many([session_id], member, ttl_s))[session_id]

    async def refresh_many(self, session_ids: Iterable[str], member: str, ttl_s: float | None = None) -> dict[str, bool]:
        """`refresh` for all of a member's sessions in a few round trips (an edge
        with hundreds of sessions refreshes them together every tick)."""
        ids = list(dict.fromkeys(session_ids))
        ttl = self._ttl_ms(ttl_s)
        out: dict[str, bool] = {}
        for i in range(0, len(ids), _BATCH):
            chunk = ids[i : i + _BATCH]
            res = await self._refresh(
                keys=[self.member_key(member), *(self.key(s) for s in chunk)], args=[member, ttl, *chunk]
            )
            out.update(zip(chunk, (bool(r) for r in res)))
        return out

    async def release(self, session_id: str, member: str) -> bool:
        """Delete the record if `member` owns it (never another member's)."""
        return bool(await self._release(keys=[self.key(session_id), self.member_key(member)], args=[member, session_id]))

    async def replace(self, session_id: str, old: str, new: str, ttl_s: float | None = None) -> str:
        """Take a session over from `old` (known gone: not in the membership any
        more) for `new`, atomically: succeeds if the owner is still `old`, or
        already `new`, or the record expired. Returns the owner after the call,
        so of two edges racing to take over, the loser learns the winner."""
        owner = await self._replace(
            keys=[self.key(session_id), self.member_key(old), self.member_key(new)],
            args=[old, new, self._ttl_ms(ttl_s), session_id],
        )
        return _str(owner)  # type: ignore[return-value]

    async def loads(self, members: Sequence[str]) -> dict[str, int]:
        """Live sessions per member (unexpired leases), for `Ring.assign`."""
        members = list(members)
        out: dict[str, int] = {}
        for i in range(0, len(members), _BATCH):
            chunk = members[i : i + _BATCH]
            res = await self._loads(keys=[self.member_key(m) for m in chunk])
            out.update(zip(chunk, (int(r) for r in res)))
        return out
