"""Balance, movement and lookup cost of the session ring (voxmesh.core.routing.ring).

    python bench/ring/ring_bench.py [--keys 10000] [--sizes 10,50,100]

Prints figures, asserts nothing (the properties are asserted by
libs/core/tests/routing/test_ring.py). For comparison it also measures a
virtual-node ring (the alternative we did not pick) and a perfectly fair random
draw (numpy multinomial), which shows how much of the imbalance is just the
sampling noise of 10k random session ids.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import random
import statistics
import time
import uuid
from collections import Counter

import numpy as np

from voxmesh.core.routing.ring import Ring


class VnodeRing:
    """Classic consistent hashing: V points per member on a 64-bit circle."""

    def __init__(self, members: list[str], vnodes: int) -> None:
        pts = sorted((self._h(f"{m}#{i}".encode()), m) for m in members for i in range(vnodes))
        self.points = [p for p, _ in pts]
        self.owners = [m for _, m in pts]

    @staticmethod
    def _h(b: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "big")

    def owner(self, key: str) -> str:
        i = bisect.bisect(self.points, self._h(key.encode()))
        return self.owners[i % len(self.owners)]

    def shares(self) -> Counter:
        """Fraction of the circle each member owns (the expected key share)."""
        out: Counter = Counter()
        prev = self.points[-1] - 2**64
        for p, m in zip(self.points, self.owners):
            out[m] += (p - prev) / 2**64
            prev = p
        return out


def keys_for(n: int, seed: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def balance(counts: Counter, n_members: int, n_keys: int) -> tuple[float, float, float]:
    values = [counts.get(i, 0) for i in counts] + [0] * (n_members - len(counts))
    mean = n_keys / n_members
    return max(values) / mean, min(values) / mean, statistics.pstdev(values)


def per_key_us(fn, keys: list[str]) -> float:
    sample = keys[:2000]
    t = time.perf_counter()
    for k in sample:
        fn(k)
    return (time.perf_counter() - t) / len(sample) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--factor", type=float, default=1.05)
    args = ap.parse_args()
    keys = keys_for(args.keys)
    K = args.keys
    np_rng = np.random.default_rng(6)

    print(f"{K} sessions (random UUIDs, seed 6); counts per member; max/mean and min/mean are ratios to the ideal K/N\n")
    for n in map(int, args.sizes.split(",")):
        members = [f"media-edge-{i}" for i in range(n)]
        ring = Ring(members)
        ideal_sd = (K / n * (1 - 1 / n)) ** 0.5
        print(f"=== N = {n} members (ideal {K / n:.0f} per member; binomial sd {ideal_sd:.1f})")

        fair = np_rng.multinomial(K, [1 / n] * n, size=500)
        print(f"  fair random draw (500 draws)      max/mean {fair.max(axis=1).mean() / (K / n):.3f}   "
              f"sd {fair.std(axis=1).mean():6.1f}   <- sampling noise, the floor for any pure hash")

        owner = {k: ring.owner(k) for k in keys}
        mx, mn, sd = balance(Counter(owner.values()), n, K)
        print(f"  rendezvous owner()                max/mean {mx:.3f}   min/mean {mn:.3f}   sd {sd:6.1f}")

        loads: Counter = Counter()
        on_owner = 0
        for k in keys:
            m = ring.assign(k, loads, args.factor)
            loads[m] += 1
            on_owner += m == owner[k]
        mx, mn, sd = balance(loads, n, K)
        print(f"  rendezvous assign(factor {args.factor})    max/mean {mx:.3f}   min/mean {mn:.3f}   sd {sd:6.1f}   "
              f"on hash owner {on_owner / K:.1%}")

        for v in (100, 1000):
            vr = VnodeRing(members, v)
            mx, mn, sd = balance(Counter(vr.owner(k) for k in keys), n, K)
            share = vr.shares()
            print(f"  vnode ring, {v:4d} vnodes/member    max/mean {mx:.3f}   min/mean {mn:.3f}   sd {sd:6.1f}   "
                  f"arc share max/mean {max(share.values()) * n:.3f}")

        gone = members[n // 2]
        after = ring.remove(gone)
        moved = [k for k in keys if after.owner(k) != owner[k]]
        others = sum(1 for k in moved if owner[k] != gone)
        print(f"  leave (-{gone}): moved {len(moved)} = {len(moved) / K:.2%} of keys; ideal 1/N = {1 / n:.2%}; "
              f"moved that were not the leaver's: {others}; receivers: {len({after.owner(k) for k in moved})}")
        new = f"media-edge-{n}"
        grown = ring.add(new)
        moved = [k for k in keys if grown.owner(k) != owner[k]]
        others = sum(1 for k in moved if grown.owner(k) != new)
        print(f"  join (+{new}): moved {len(moved)} = {len(moved) / K:.2%} of keys; ideal 1/(N+1) = {1 / (n + 1):.2%}; "
              f"moved elsewhere than the joiner: {others}")

        vr = VnodeRing(members, 1000)
        print(f"  lookup per key: owner {per_key_us(ring.owner, keys):.1f} us, owners(k,3) "
              f"{per_key_us(lambda k: ring.owners(k, 3), keys):.1f} us, assign {per_key_us(lambda k: ring.assign(k, loads), keys):.1f} us; "
              f"vnode ring owner {per_key_us(vr.owner, keys):.1f} us")
        print()


if __name__ == "__main__":
    main()
