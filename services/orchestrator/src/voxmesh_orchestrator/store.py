"""Session state in Redis. An orchestrator replica keeps nothing that it
cannot rebuild from here.

Keys (all share the session's TTL, refreshed on every write):
  vm:s:{sid}:history   list of JSON messages {role, content, turn_id, ...}
  vm:s:{sid}:turns     set of committed turn ids (user and assistant): idempotency
  vm:s:{sid}:turn      hash: current turn state: state, user_turn, and the reply
                       in flight: reply_turn, reply_status (generating |
                       generated | played | interrupted), and per clause
                       c:{i} text (written BEFORE the clause is sent), p:{i}
                       played whole, h:{i} heard characters
  vm:s:{sid}:meta      hash: agent, created_at, orchestrator (replica serving it)
  vm:s:{sid}:epoch     fencing counter: every Converse that takes the session
                       takes the next epoch; writes carrying an older one are
                       refused, so a replica that lost the session (a stream
                       that broke, an edge that was replaced) cannot write
  vm:s:{sid}:owner     the edge that holds the session's connection
  vm:s:{sid}:tools     hash: tool-call key -> JSON result (completed calls survive interruptions)

Every write that commits a turn is one Lua script: atomic, and a no-op when
the turn id was already committed, so a retried or replayed commit never
duplicates a message. Commits and reply-state writes are fenced by the epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

PREFIX = "vm:s:"
SUFFIXES = ("history", "turns", "turn", "meta", "owner", "tools", "events", "epoch")

# A fenced script returns this when the caller's epoch is not the current one.
FENCED = -1

_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[#KEYS]) ~= ARGV[1] then
  return -1
end
"""

# KEYS: history, turns, turn, epoch  ARGV: fence, turn_id, message json, ttl, state-field pairs...
_COMMIT = _FENCE + """
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4]))
end
return 1
"""

# A new reply: forget the previous reply's clauses and offsets.
# KEYS: turn, epoch  ARGV: fence, ttl, reply_turn
_BEGIN_REPLY = _FENCE + """
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  local p = string.sub(f, 1, 2)
  if p == 'c:' or p == 'p:' or p == 'h:' then
    redis.call('HDEL', KEYS[1], f)
  end
end
redis.call('HSET', KEYS[1], 'reply_turn', ARGV[3], 'reply_status', 'generating')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# Fields of the reply in flight, only while it is still the current reply.
# KEYS: turn, epoch  ARGV: fence, ttl, reply_turn, field-value pairs...
_REPLY_SET = _FENCE + """
if redis.call('HGET', KEYS[1], 'reply_turn') ~= ARGV[3] then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
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
    if msg['generated'] == nil then
      msg['generated'] = msg['content']
    end
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


@dataclass
class SavedReply:
    """The reply in flight as recorded in the turn hash."""

    turn_id: str = ""
    status: str = ""
    clauses: dict[int, str] = field(default_factory=dict)
    played: set[int] = field(default_factory=set)
    heard: dict[int, int] = field(default_factory=dict)


def saved_reply(state: dict[str, str]) -> SavedReply:
    out = SavedReply(state.get("reply_turn", ""), state.get("reply_status", ""))
    for f, v in state.items():
        kind, _, idx = f.partition(":")
        if not idx.isdigit():
            continue
        if kind == "c":
            out.clauses[int(idx)] = v
        elif kind == "p" and v == "1":
            out.played.add(int(idx))
        elif kind == "h":
            out.heard[int(idx)] = int(v)
    return out


class Superseded(Exception):
    """Another Converse stream took this session over: stop writing."""


def _fence(epoch: int | None) -> str:
    return "" if epoch is None else str(epoch)


class SessionStore:
    def __init__(self, client: aioredis.Redis, ttl_s: int = 24 * 3600) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self._commit = client.register_script(_COMMIT)
        self._cut = client.register_script(_CUT)
        self._begin_reply = client.register_script(_BEGIN_REPLY)
        self._reply_set = client.register_script(_REPLY_SET)

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

    async def take_over(self, sid: str, replica: str) -> int:
        """A Converse stream starts serving the session: the next epoch (writes
        with an older one are refused from now on) and who serves it."""
        async with self.r.pipeline(transaction=True) as p:
            p.incr(key(sid, "epoch"))
            p.expire(key(sid, "epoch"), self.ttl_s)
            p.hset(key(sid, "meta"), "orchestrator", replica)
            p.expire(key(sid, "meta"), self.ttl_s)
            epoch, *_ = await p.execute()
        return int(epoch)

    async def history(self, sid: str) -> list[dict]:
        return [json.loads(m) for m in await self.r.lrange(key(sid, "history"), 0, -1)]

    async def commit_message(self, sid: str, turn_id: str, message: dict, *, epoch: int | None = None, **state: str) -> bool:
        """Append `message` once per turn id, with turn-state fields, atomically.
        Raises Superseded when `epoch` is no longer the session's."""
        message = {**message, "turn_id": turn_id, "ts": round(time.time(), 3)}
        argv: list[str] = [_fence(epoch), turn_id, json.dumps(message), str(self.ttl_s)]
        for k, v in state.items():
            argv += [k, str(v)]
        done = await self._commit(keys=[key(sid, "history"), key(sid, "turns"), key(sid, "turn"), key(sid, "epoch")], args=argv)
        if done == FENCED:
            raise Superseded(sid)
        return bool(done)

    async def begin_reply(self, sid: str, reply_turn: str, *, epoch: int | None = None) -> None:
        done = await self._begin_reply(keys=[key(sid, "turn"), key(sid, "epoch")], args=[_fence(epoch), str(self.ttl_s), reply_turn])
        if done == FENCED:
            raise Superseded(sid)

    async def set_reply(self, sid: str, reply_turn: str, fields: dict[str, str | int], *, epoch: int | None = None) -> bool:
        """Set fields of the reply in flight (a clause "c:0", an offset "h:0",
        "reply_status"); False when `reply_turn` is no longer the current reply."""
        argv: list[str] = [_fence(epoch), str(self.ttl_s), reply_turn]
        for k, v in fields.items():
            argv += [k, str(v)]
        done = await self._reply_set(keys=[key(sid, "turn"), key(sid, "epoch")], args=argv)
        if done == FENCED:
            raise Superseded(sid)
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
