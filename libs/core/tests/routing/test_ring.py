"""Properties of the rendezvous ring (issue 6): balance, minimal movement,
fallback order, draining, determinism across processes.

Plain seeded loops (hypothesis is not installed here): every run checks the
same 10k session ids, so a failure reproduces exactly.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import uuid
from collections import Counter

import pytest

from voxmesh.core.routing.ring import EmptyRingError, Ring

N_KEYS = 10_000


def session_ids(n: int = N_KEYS, seed: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


def members(n: int, prefix: str = "media-edge-") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture(scope="module")
def keys() -> list[str]:
    return session_ids()


@pytest.fixture(scope="module")
def ring50() -> Ring:
    return Ring(members(50))


@pytest.fixture(scope="module")
def owners50(ring50: Ring, keys: list[str]) -> dict[str, str]:
    return {k: ring50.owner(k) for k in keys}


def test_bounded_assignment_balances_10k_sessions_on_50_members_within_5_percent(ring50, keys):
    loads: Counter[str] = Counter()
    on_hash_owner = 0
    for k in keys:
        m = ring50.assign(k, loads, factor=1.05)
        loads[m] += 1
        on_hash_owner += m == ring50.owner(k)
    mean = N_KEYS / 50
    assert sum(loads.values()) == N_KEYS and len(loads) == 50
    assert max(loads.values()) / mean <= 1.05
    # The cap only diverts the overflow: most sessions still sit on their hash owner
    # (~85% here; the rest went to their 2nd, 3rd... choice while the cap was tight).
    assert on_hash_owner / N_KEYS > 0.8


def test_pure_hash_is_unbiased_and_within_sampling_noise(owners50):
    # No pure hash can reach 1.05 on 10k random keys (Binomial(10000, 1/50) has sd 14
    # around 200, so the fullest of 50 is ~1.15x the mean); what the hash itself must
    # show is no bias: counts consistent with a uniform draw.
    counts = Counter(owners50.values())
    assert len(counts) == 50
    mean = N_KEYS / 50
    assert max(counts.values()) / mean <= 1.25
    chi2 = sum((c - mean) ** 2 / mean for c in counts.values())
    assert chi2 < 90  # 49 degrees of freedom: p ~ 3e-4 of a fair hash exceeding this


def test_leave_moves_only_the_leavers_keys(ring50, keys, owners50):
    gone = "media-edge-17"
    after = ring50.remove(gone)
    moved = [k for k in keys if after.owner(k) != owners50[k]]
    assert all(owners50[k] == gone for k in moved)  # no other key moves
    assert len(moved) == sum(1 for k in keys if owners50[k] == gone)  # and all of its keys do
    assert 0.7 * N_KEYS / 50 <= len(moved) <= 1.3 * N_KEYS / 50  # about 1/N
    # ...and they spread over the survivors instead of piling on one neighbour.
    assert len({after.owner(k) for k in moved}) > 40


def test_join_moves_about_one_nth_and_only_to_the_new_member(ring50, keys, owners50):
    new = "media-edge-50"
    after = ring50.add(new)
    moved = [k for k in keys if after.owner(k) != owners50[k]]
    assert all(after.owner(k) == new for k in moved)
    assert 0.7 * N_KEYS / 51 <= len(moved) <= 1.3 * N_KEYS / 51


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_owners_is_an_ordered_fallback_list(ring50, keys, n):
    for k in keys[:500]:
        top = ring50.owners(k, n)
        assert len(top) == n == len(set(top))
        assert top[0] == ring50.owner(k)
        assert top == ring50.owners(k)[:n]


def test_fallback_agrees_with_a_peer_that_dropped_the_member(ring50, keys):
    # A caller that finds owners(k)[0] down and tries owners(k)[1] lands where a
    # peer whose ring no longer has that member would send the key.
    for k in keys[:500]:
        first, second, third = ring50.owners(k, 3)
        assert ring50.remove(first).owner(k) == second
        assert ring50.remove(first).owners(k, 2) == [second, third]


def test_owners_edge_cases():
    r = Ring(["a", "b"])
    assert sorted(r.owners("k", 10)) == ["a", "b"]
    assert r.owners("k", 0) == []
    assert Ring().owners("k") == []
    with pytest.raises(EmptyRingError):
        Ring().owner("k")
    with pytest.raises(EmptyRingError):
        Ring(["a"], draining=["a"]).owner("k")
    with pytest.raises(ValueError):
        Ring(["a"], draining=["b"])
    assert Ring(["b", "a", "a"]).members == ("a", "b")
    assert r.owner("k") == r.owner(b"k")


def test_draining_members_take_no_new_keys_and_move_only_their_own(ring50, keys, owners50):
    drained = ring50.drain("media-edge-3", "media-edge-4")
    assert "media-edge-3" in drained and drained.draining == {"media-edge-3", "media-edge-4"}
    assert len(drained.active) == 48
    for k in keys:
        o = drained.owner(k)
        assert o not in drained.draining
        if owners50[k] not in drained.draining:
            assert o == owners50[k]
        # The full list (e.g. to find where a live session may be) still has them.
        assert drained.owner(k, include_draining=True) == owners50[k]
        assert drained.draining.isdisjoint(drained.owners(k, 3))
    assert drained.undrain("media-edge-3", "media-edge-4") == ring50
    # with_members keeps drain marks of members that stay, drops those that left.
    assert drained.with_members(members(50)[4:]).draining == {"media-edge-4"}
    assert drained.remove("media-edge-3").draining == {"media-edge-4"}


def test_assign_skips_draining_and_full_members():
    r = Ring(members(4))
    k = "session-x"
    order = r.owners(k)
    assert r.assign(k, {}) == order[0]
    # The hash owner is at the cap: the key goes to its next choice.
    loads = {order[0]: 10, order[1]: 9, order[2]: 9, order[3]: 9}
    assert r.assign(k, loads, factor=1.0) == order[1]
    assert r.drain(order[0]).assign(k, {}) == order[1]
    with pytest.raises(ValueError):
        r.assign(k, {}, factor=0.9)


def test_ring_is_immutable_and_comparable():
    a = Ring(["x", "y"])
    b = a.add("z")
    assert a.members == ("x", "y") and b.members == ("x", "y", "z")
    assert b.remove("z") == a and hash(b.remove("z")) == hash(a)
    assert a.with_members(["y", "x"]) == a


# Pinned outputs: the hash must never change between versions, or old and new pods
# disagree on owners during a rolling deploy. Changing these is a breaking change.
GOLDEN = {
    "00000000-0000-4000-8000-000000000000": ["media-edge-3", "media-edge-0", "media-edge-1", "media-edge-4", "media-edge-2"],
    "session-1": ["media-edge-4", "media-edge-1", "media-edge-2", "media-edge-3", "media-edge-0"],
    "ünïcode-sëssion": ["media-edge-2", "media-edge-0", "media-edge-3", "media-edge-4", "media-edge-1"],
}


def test_golden_owners_are_stable_and_match_the_spec():
    r = Ring(members(5))
    for key, expected in GOLDEN.items():
        assert r.owners(key) == expected
        # The spec, restated without the Ring code: score = blake2b-64(member NUL key), big-endian.
        import hashlib

        def score(m: str) -> int:
            return int.from_bytes(hashlib.blake2b(f"{m}\0{key}".encode(), digest_size=8).digest(), "big")

        assert sorted(members(5), key=score, reverse=True) == expected


CHILD = """
import json, sys
from voxmesh.core.routing.ring import Ring
keys = json.load(sys.stdin)
r = Ring([f"media-edge-{i}" for i in range(50)])
print(json.dumps([r.owners(k, 3) for k in keys]))
"""


def test_same_owners_in_another_process_with_another_hash_seed(ring50, keys):
    sample = keys[:2000]
    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(sample),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        # A different str-hash seed: Python's hash() would disagree here, ours must not.
        env={**os.environ, "PYTHONHASHSEED": str(os.getpid() % 1000 + 1)},
    )
    assert json.loads(out.stdout) == [ring50.owners(k, 3) for k in sample]


def test_balance_is_even_across_ring_sizes(keys):
    # Cheap sanity over other sizes: coefficient of variation near binomial's.
    for n in (10, 100):
        counts = Counter(Ring(members(n)).owner(k) for k in keys[:5000])
        mean = 5000 / n
        cv = statistics.pstdev(counts.values()) / mean
        assert cv < 2.0 * ((1 - 1 / n) / mean) ** 0.5
