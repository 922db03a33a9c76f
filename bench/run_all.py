"""`make bench`: every benchmark, one after another; each prints its figures."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent
BENCHES = [
    ["ttfa/bench_ttfa.py", "--runs", "5"],
    ["understanding/bench_understanding.py"],
    ["bargein/bench_bargein.py"],
    ["recovery/bench_recovery.py"],
    ["edge_capacity/edge_capacity_bench.py", "--sessions", "20,30", "--seconds", "12"],
    ["ring/ring_bench.py"],
    ["codec/codec_bench.py"],
]


def main() -> int:
    failed = []
    for bench in BENCHES:
        path = HERE / bench[0]
        if not path.exists():
            print(f"== {bench[0]}: not present, skipped")
            continue
        print(f"\n== {' '.join(bench)}", flush=True)
        if subprocess.run([sys.executable, str(path), *bench[1:]]).returncode != 0:
            failed.append(bench[0])
    if failed:
        print(f"\nbenchmarks that failed to run: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
