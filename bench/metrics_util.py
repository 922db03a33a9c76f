"""Read histogram sums and counts from /metrics endpoints (benchmarks print
per-stage means from deltas)."""

from __future__ import annotations

import re
import urllib.request

_LINE = re.compile(r"^(voxmesh_[a-z_]+)_(sum|count)(\{[^}]*\})? ([0-9.eE+-]+)$")


def scrape(urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """{metric{labels}: (sum, count)} over all endpoints."""
    out: dict[str, list[float]] = {}
    for url in urls.values():
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            m = _LINE.match(line)
            if m:
                key = m.group(1) + (m.group(3) or "")
                slot = out.setdefault(key, [0.0, 0.0])
                slot[0 if m.group(2) == "sum" else 1] += float(m.group(4))
    return {k: (v[0], v[1]) for k, v in out.items()}


def mean_delta(before: dict, after: dict, key: str) -> float | None:
    s1, c1 = after.get(key, (0.0, 0.0))
    s0, c0 = before.get(key, (0.0, 0.0))
    return (s1 - s0) / (c1 - c0) if c1 > c0 else None
