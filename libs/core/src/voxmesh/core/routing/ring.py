"""Map a key (a `session_id`) to a member (a media-edge pod, an llm replica).

Rendezvous (highest-random-weight) hashing, not a ring of virtual nodes.
Every member gets a score `blake2b(member NUL key)`; the member with the highest
score owns the key, and the members in decreasing score order are the fallback
list (`owners`). The name "Ring" is kept because that is what the design calls it.

Why rendezvous over virtual nodes, at our sizes (10-100 members, figures from
bench/ring in docs/capacity.md):

- Balance: every member's expected share is exactly 1/N, with nothing to tune.
  A vnode ring's shares vary by about 1/sqrt(V) per member (V vnodes each): at
  50 members the largest arc share is 1.27x the mean with 100 vnodes and still
  1.09x with 1000, imbalance added on top of the sampling noise of the keys.
- Movement: both are minimal. A member that leaves gives away exactly its own
  keys, spread over all the others; a member that joins takes ~1/(N+1) of the
  keys, taken from all the others; no other key moves.
- Fallback: the second choice of a key is a uniformly random other member, so
  when a member dies its load spreads over all survivors instead of landing on
  one ring neighbour. And `owners(key)` without member X is exactly `owners(key)`
  with X removed, so a caller that walks the fallback list agrees with a peer
  that has already dropped X from its ring.
- Cost: a lookup is O(N) hashes (about 0.43 us each: ~21 us at 50 members,
  ~43 us at 100), where a vnode ring is one hash and a bisect (~1-2 us). A
  lookup happens per signaling request and per LLM turn, which cost
  milliseconds anyway, so the simpler, exactly balanced scheme wins.

Balance of a pure hash at 10k keys: no function of (key, members) alone can put
10k random session ids on 50 members with max/mean <= 1.05: each member's count
is Binomial(10000, 1/50) (mean 200, sd 14), so the fullest of 50 is ~1.16x the
mean. `assign` adds the bounded-load rule (Mirrokni, Thorup, Zadimoghaddam 2017,
"consistent hashing with bounded loads"): a NEW key goes to the first member in
its fallback list whose live load is under about `factor * mean`. The loads
come from the session owner records (`owners.SessionOwners.loads`); once placed,
a session's owner is recorded in Redis, so it never moves when loads or members
change.

Draining members (a pod that got SIGTERM and still holds live sessions) stay in
the ring's member set but take no NEW keys: `owner`, `owners` and `assign` skip
them unless asked. Excluding a member moves only that member's keys, as if it
had left. Its live sessions keep their Redis owner record and stay put.

Ring is immutable: `add`/`remove`/`drain`/`with_members` return a new Ring, so a
membership watcher can swap the current ring atomically while requests read it.

The hash must never change between versions: during a rolling deploy old and
new pods must agree on owners (tests pin a few golden values).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from fractions import Fraction

_DIGEST = 8  # 64-bit scores: ties between members are astronomically unlikely, and broken by name


class EmptyRingError(LookupError):
    """No member can take the key (no members, or all of them draining)."""


def _encode(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8")


class Ring:
    """Rendezvous-hash ring over member names (stable names, e.g. StatefulSet pod
    names, so a restarted pod with a new IP keeps its keys)."""

    __slots__ = ("_members", "_draining", "_states", "_active_states")

    def __init__(self, members: Iterable[str] = (), draining: Iterable[str] = ()) -> None:
        names = sorted(set(members))
        draining_set = frozenset(draining)
        unknown = draining_set.difference(names)
        if unknown:
            # A draining member is still a member (it holds live sessions); naming one
            # that is not in the ring is a caller bug worth surfacing.
            raise ValueError(f"draining members not in the ring: {sorted(unknown)}")
        self._members: tuple[str, ...] = tuple(names)
        self._draining: frozenset[str] = draining_set
        # Hash each member's name prefix once; a lookup only copies the state and
        # feeds it the key (saves ~40% of the per-member cost).
        self._states = tuple((m, hashlib.blake2b(m.encode("utf-8") + b"\0", digest_size=_DIGEST)) for m in names)
        self._active_states = tuple(s for s in self._states if s[0] not in draining_set)

    # -- membership ---------------------------------------------------------------

    @property
    def members(self) -> tuple[str, ...]:
        """All members, draining ones included, sorted by name."""
        return self._members

    @property
    def active(self) -> tuple[str, ...]:
        """Members that take new keys."""
        return tuple(m for m, _ in self._active_states)

    @property
    def draining(self) -> frozenset[str]:
        return self._draining

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member: object) -> bool:
        return member in self._members

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ring) and self._members == other._members and self._draining == other._draining

    def __hash__(self) -> int:
        return hash((self._members, self._draining))

    def __repr__(self) -> str:
        return f"Ring(members={list(self._members)!r}, draining={sorted(self._draining)!r})"

    def with_members(self, members: Iterable[str], draining: Iterable[str] | None = None) -> Ring:
        """A ring over `members`; draining members that are still members stay
        draining unless `draining` is given."""
        members = set(members)
        if draining is None:
            draining = self._draining & members
        return Ring(members, draining)

    def add(self, *members: str) -> Ring:
        return Ring((*self._members, *members), self._draining)

    def remove(self, *members: str) -> Ring:
        gone = set(members)
        return Ring((m for m in self._members if m not in gone), self._draining - gone)

    def drain(self, *members: str) -> Ring:
        """Stop giving `members` new keys (they keep their live sessions)."""
        return Ring(self._members, self._draining | set(members))

    def undrain(self, *members: str) -> Ring:
        return Ring(self._members, self._draining - set(members))

    # -- lookups ------------------------------------------------------------------

    def _scores(self, key: str | bytes, include_draining: bool) -> list[tuple[int, str]]:
        kb = _encode(key)
        out = []
        for member, state in self._states if include_draining else self._active_states:
            h = state.copy()
            h.update(kb)
            out.append((int.from_bytes(h.digest(), "big"), member))
        return out

    def owner(self, key: str | bytes, *, include_draining: bool = False) -> str:
        """The member that owns `key` (draining members skipped unless asked)."""
        scores = self._scores(key, include_draining)
        if not scores:
            raise EmptyRingError("no member can take new keys" if self._members else "the ring has no members")
        return max(scores)[1]

    def owners(self, key: str | bytes, n: int | None = None, *, include_draining: bool = False) -> list[str]:
        """The first `n` members to try for `key`, best first (all of them when
        `n` is None). owners(key)[0] == owner(key); the rest are the fallbacks,
        e.g. the next llm replica when the first one is down. Empty when no
        member can take keys."""
        scores = self._scores(key, include_draining)
        if n is None or n >= len(scores):
            scores.sort(reverse=True)
            return [m for _, m in scores]
        return [m for _, m in heapq.nlargest(max(n, 0), scores)]

    def assign(self, key: str | bytes, loads: Mapping[str, int], factor: float = 1.05) -> str:
        """Where to place a NEW key given the members' current loads (live keys
        per member): the first member in the key's fallback list whose load is
        under the cap, cap = max(ceil(mean'), floor(factor * mean')) where mean'
        is the mean load of the active members counting this new key. So at
        placement time no member holds more than max(factor x mean, ceil(mean))
        keys (the bounded-load rule), while most keys still land on their hash
        owner. Loads of members not in `active` are ignored.

        The result depends on `loads`, so record it (SessionOwners.claim) instead
        of recomputing it later: that record is what later requests follow.
        """
        if factor < 1:
            raise ValueError("factor must be >= 1")
        scores = self._scores(key, False)
        if not scores:
            raise EmptyRingError("no member can take new keys" if self._members else "the ring has no members")
        n = len(scores)
        total = sum(max(0, int(loads.get(m, 0))) for _, m in scores) + 1
        # Exact rational arithmetic: 1.05 * 10000 / 50 is 210.00000000000003 in floats,
        # and a ceil of that would let one member reach 211.
        f = Fraction(factor).limit_denominator(10_000)
        cap = max(-(-total // n), int(f * total / n))
        best = max(scores)[1]
        if loads.get(best, 0) < cap:
            return best  # the common case: no need to order the whole list
        scores.sort(reverse=True)
        for _, member in scores:
            if loads.get(member, 0) < cap:
                return member
        # Unreachable while loads are non-negative (n * cap >= total > sum of loads);
        # kept so a caller passing odd loads still gets the hash owner.
        return best
