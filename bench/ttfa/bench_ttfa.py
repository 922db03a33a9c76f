"""TTFA of N `voxmesh call` runs against a running stack (or one it starts),
with the split per stage read from the services' metrics.

    python bench/ttfa/bench_ttfa.py --runs 5                # starts its own stack
    python bench/ttfa/bench_ttfa.py --url http://127.0.0.1:8080 --metrics-base 9101
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from metrics_util import mean_delta, scrape  # noqa: E402

from voxmesh.testing.speech import say_to_wav  # noqa: E402
from voxmesh_cli.call import call  # noqa: E402

STAGES = [
    ("end-of-turn delay (stt)", "voxmesh_eou_delay_seconds"),
    ("final transcript (stt)", "voxmesh_stt_final_seconds"),
    ("turn commit -> first clause (orchestrator)", "voxmesh_first_clause_seconds"),
    ("llm first token", "voxmesh_llm_ttft_seconds"),
    ("tts first chunk", "voxmesh_tts_first_chunk_seconds"),
    ("TTFA at the edge", "voxmesh_ttfa_seconds"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--url", default="")
    ap.add_argument("--text", default="Where is my order four two one nine?")
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-ttfa-"))
    stack = None
    if args.url:
        url = args.url
        urls = {f"m{p}": f"http://127.0.0.1:{p}/metrics" for p in (9101, 9102, 9103, 9104)} | {"edge": f"{url}/metrics"}
    else:
        from voxmesh_cli.stack import Stack

        stack = Stack(work / "stack")
        stack.start()
        url, urls = stack.edge_url, stack.metrics_urls
    try:
        wav = say_to_wav(args.text, work / "q.wav", lead_silence=1.0, tail_silence=0.5)
        asyncio.run(call(str(wav), url=url))  # warm-up call, not counted
        before = scrape(urls)
        ttfas, agent = [], ""
        for i in range(args.runs):
            r = asyncio.run(call(str(wav), url=url))
            ttfas.append(r["ttfa_ms"])
            agent = r["agent_text"]
            print(f"run {i + 1}: ttfa_ms={r['ttfa_ms']} heard={r['user_transcript']!r}", flush=True)
        after = scrape(urls)
        ok = [t for t in ttfas if t is not None]
        print(f"\nTTFA at the client over {len(ok)} runs: median {statistics.median(ok):.0f} ms, range {min(ok)}-{max(ok)} ms")
        print(f"agent said: {agent}")
        print("stage means (from the services' metrics):")
        for name, metric in STAGES:
            m = mean_delta(before, after, metric)
            print(f"  {name:45s} {'n/a' if m is None else f'{m * 1000:7.0f} ms'}")
    finally:
        if stack:
            stack.stop()


if __name__ == "__main__":
    main()
