"""Session state in Redis. An orchestrator replica keeps nothing that it
cannot rebuild from here.

Keys (all share the session's TTL, refreshed on every write):
  vm:s:{sid}:history   list of JSON messages {role, content, turn_id, ...}
  vm:s:{sid}:turns     set of committed turn ids (user and assistant): idempotency
  vm:s:{sid}:turn      hash: current turn state (state, user_turn, reply_turn,
                       heard offsets per clause, pending clauses)
  vm:s:{sid}:meta      hash: agent, created_at
  vm:s:{sid}:owner     the edge that holds the session's connection
  vm:s:{sid}:tools     hash: tool-call key -> JSON result (completed calls survive interruptions)

Every write that commits a turn is one Lua script: atomic, and a no-op when
the turn id was already committed, so a retried or replayed commit never
duplicates a message.
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis

PREFIX = "vm:s:"
SUFFIXES = ("history", "turns", "turn", "meta", "owner", "tools", "events")

# KEYS: history, turns, turn  ARGV: turn_id, message json, ttl, state-field pairs...
_COMMIT = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3]))
end
return 1
"""

# Replace the content of the assistant message of turn ARGV[1] (cut to what was heard).
# KEYS: history  ARGV: turn_id, new content, heard flag
_CUT = """
local n = redis.call('LLEN', KEYS[1])
for i = n - 1, math.max(0, n - 20), -1 do
  local raw = redis.call('LINDEX', KEYS[1], i)
  local msg = cjson.decode(raw)
  if msg['turn_id'] == ARGV[1] and msg['role'] == 'assistant' then
    msg['content'] = ARGV[2]
    msg['interrupted'] = true
    redis.call('LSET', KEYS[1], i, cjson.encode(msg))
    return 1
  end
end
return 0
"""


def key(session_id: str, suffix: str) -> str:
    return f"{PREFIX}{session_id}:{suffix}"


class SessionStore:
    def __init__(self, client: aioredis.Redis, ttl_s: int = 24 * 3600) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self._commit = client.register_script(_COMMIT)
        self._cut = client.register_script(_CUT)

    @classmethod
    def from_url(cls, url: str, ttl_s: int = 24 * 3600) -> "SessionStore":
        return cls(aioredis.from_url(url, decode_responses=True), ttl_s)

    async def close(self) -> None:
        await self.r.aclose()

    async def ensure_session(self, sid: str, agent: str) -> bool:
        """Create the session's meta if absent; True when it already existed."""
        created = await self.r.hsetnx(key(sid, "meta"), "created_at", str(time.time()))
        await self.r.hsetnx(key(sid, "meta"), "agent", agent)
        await self.r.expire(key(sid, "meta"), self.ttl_s)
        return not created

    async def history(self, sid: str) -> list[dict]:
        return [json.loads(m) for m in await self.r.lrange(key(sid, "history"), 0, -1)]

    async def commit_message(self, sid: str, turn_id: str, message: dict, **state: str) -> bool:
        """Append `message` once per turn id, with turn-state fields, atomically."""
        message = {**message, "turn_id": turn_id, "ts": round(time.time(), 3)}
        argv: list[str] = [turn_id, json.dumps(message), str(self.ttl_s)]
        for k, v in state.items():
            argv += [k, str(v)]
        done = await self._commit(keys=[key(sid, "history"), key(sid, "turns"), key(sid, "turn")], args=argv)
        return bool(done)

    async def is_committed(self, sid: str, turn_id: str) -> bool:
        return bool(await self.r.sismember(key(sid, "turns"), turn_id))

    async def cut_assistant(self, sid: str, turn_id: str, heard_text: str) -> bool:
        return bool(await self._cut(keys=[key(sid, "history")], args=[turn_id, heard_text]))

    async def set_turn_state(self, sid: str, **fields: str) -> None:
        if fields:
            async with self.r.pipeline(transaction=True) as p:
                p.hset(key(sid, "turn"), mapping={k: str(v) for k, v in fields.items()})
                p.expire(key(sid, "turn"), self.ttl_s)
                await p.execute()

    async def turn_state(self, sid: str) -> dict[str, str]:
        return await self.r.hgetall(key(sid, "turn"))

    async def save_tool_result(self, sid: str, call_key: str, result: dict) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(key(sid, "tools"), call_key, json.dumps(result))
            p.expire(key(sid, "tools"), self.ttl_s)
            await p.execute()

    async def tool_result(self, sid: str, call_key: str) -> dict | None:
        raw = await self.r.hget(key(sid, "tools"), call_key)
        return json.loads(raw) if raw else None

    async def delete_session(self, sid: str) -> int:
        """Delete every key of one session (retention / right to erasure)."""
        return await self.r.delete(*(key(sid, s) for s in SUFFIXES))
