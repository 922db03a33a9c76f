"""Recovery benchmark: real processes (two orchestrators, two stt, two edges),
real SIGKILLs at the worst moments, and what the caller gets.

Kinds (each `--runs` times, 20 by default; one call per kill):
  orchestrator  SIGKILL the replica serving the call at the first clause of the
                reply (mid-reply: the reply is still being generated or played)
  stt           SIGKILL the stt replica with the open stream at the first
                interim (mid-utterance)
  edge          SIGKILL the edge holding the session at the first clause of the
                reply; `voxmesh call --reconnect` detects the dead connection
                (no audio frames for 1.5 s) and reattaches on the other edge

Recovery time, measured at the client from the kill:
  orchestrator  -> the conversation is live on the other replica (the edge's
                   `recovered` event: session loaded, pending reply restarted)
                -> the next clause of the reply said after the kill
  stt           -> the next transcript event (interim or final) of the utterance
  edge          -> the next agent audio on the new connection (detection included)

Lost / duplicated turns, from Redis history and the client's events: a call
must end with exactly one user and one assistant message, and no clause may be
said twice on one connection. An answer without the order's status (stt
misheard the digits) is counted apart as a wrong answer. After an edge loss the
clause that was playing is said again from its start on the new edge: counted
apart ("clauses re-said"), by design.

Prints figures; asserts nothing.

    python bench/recovery/bench_recovery.py --runs 20
    python bench/recovery/bench_recovery.py --runs 3 --kinds stt,edge
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import tempfile
import time
import urllib.request

import redis

from voxmesh.testing.speech import say_to_wav
from voxmesh_cli.call import call
from voxmesh_cli.stack import Stack

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results" / "recovery.json"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Bench:
    def __init__(self, stack: Stack, wav: pathlib.Path) -> None:
        self.stack = stack
        self.wav = wav
        self.r = redis.Redis.from_url(stack.redis_url, decode_responses=True)

    def serving_orchestrator(self, sid: str) -> str:
        pod = self.r.hget(f"vm:s:{sid}:meta", "orchestrator") or ""
        return self.stack.names("orchestrator")[int(pod.rsplit("-", 1)[-1])]

    def serving_stt(self) -> str:
        for name in self.stack.names("stt"):
            if not self.stack.alive(name):
                continue
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.stack.procs[name].metrics_port}/metrics", timeout=2).read().decode()
            if any(line.startswith("voxmesh_stt_active_streams ") and float(line.split()[1]) > 0 for line in text.splitlines()):
                return name
        raise RuntimeError("no stt stream open")

    def edge_proc(self, member: str) -> str:
        return self.stack.names("edge")[int(member.rsplit("-", 1)[-1])]

    def one(self, kind: str) -> dict:
        kill: dict = {}
        sid: list[str] = []

        def hook(ev: dict) -> None:
            if ev["type"] == "session" and not sid:
                sid.append(ev["session_id"])
            if kill or not sid:
                return
            if kind == "orchestrator" and ev["type"] == "agent_say":
                name = self.serving_orchestrator(sid[0])
            elif kind == "stt" and ev["type"] == "interim":
                name = self.serving_stt()
            elif kind == "edge" and ev["type"] == "agent_say" and ev["conn"] == 0:
                name = self.edge_proc(ev["edge"])
            else:
                return
            self.stack.kill(name)
            kill.update(name=name, t=time.monotonic(), at=ev["type"])

        result = asyncio.run(call(str(self.wav), url=",".join(self.stack.edge_urls), timeout=60, reconnect=(kind == "edge"), on_event=hook))
        row = {"kind": kind, "killed": kill.get("name"), "completed": result["completed"]}
        t = kill.get("t")
        events = result["events"]
        after = [e for e in events if t is not None and e["t"] >= t]
        if t is not None:
            if kind == "orchestrator":
                rec = next((e for e in after if e["type"] == "recovered" and e["component"] == "orchestrator"), None)
                row["recovery_ms"] = round((rec["t"] - t) * 1000) if rec else None
                seen = {(e["turn_id"], e["clause_id"]) for e in events if e["type"] == "agent_say" and e["t"] < t}
                nxt = next((e for e in after if e["type"] == "agent_say" and (e["turn_id"], e["clause_id"]) not in seen), None)
                row["next_clause_ms"] = round((nxt["t"] - t) * 1000) if nxt else None  # None: the reply had no more clauses
            elif kind == "stt":
                nxt = next((e for e in after if e["type"] in ("interim", "final")), None)
                row["recovery_ms"] = round((nxt["t"] - t) * 1000) if nxt else None
            else:
                onset = next((o for o in result["audio_onsets"] if o > t and any(rc["connected_at"] <= o for rc in result["reconnects"])), None)
                row["recovery_ms"] = round((onset - t) * 1000) if onset else None
                if result["reconnects"]:
                    rc = result["reconnects"][0]
                    row["detect_ms"] = round((rc["lost_at"] - t) * 1000)
                    row["reattach_ms"] = round((rc["connected_at"] - rc["lost_at"]) * 1000)
        history = [json.loads(m) for m in self.r.lrange(f"vm:s:{result['session_id']}:history", 0, -1)]
        users = [m for m in history if m["role"] == "user"]
        assistants = [m for m in history if m["role"] == "assistant"]
        row["lost"] = int(not users) + int(not assistants)
        # Answered, but not with the order's status: the digits were misheard.
        row["wrong_answer"] = int(bool(assistants) and "out for delivery" not in assistants[0]["content"])
        row["duplicated"] = max(0, len(users) - 1) + max(0, len(assistants) - 1)
        per_conn: dict = {}
        for e in events:
            if e["type"] == "agent_say":
                per_conn.setdefault((e["conn"], e["turn_id"]), []).append(e["clause_id"])
        row["duplicated"] += sum(len(ids) - len(set(ids)) for ids in per_conn.values())
        first = {(t, c) for (n, t), ids in per_conn.items() if n == 0 for c in ids}
        row["resaid_clauses"] = sum(1 for (n, t), ids in per_conn.items() if n > 0 for c in ids if (t, c) in first)
        row["heard"] = users[0]["content"] if users else ""
        row["said"] = assistants[0]["content"] if assistants else ""
        return row

    def restore(self, name: str | None) -> None:
        if name and not self.stack.alive(name):
            self.stack.restart(name)
        time.sleep(2.5)  # the edges' channels reconnect to it (backoff capped at 2 s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--kinds", default="orchestrator,stt,edge")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    stack = Stack(work / "stack", replicas={"orchestrator": 2, "stt": 2, "edge": 2})
    print(f"starting the stack (2 orchestrators, 2 stt, 2 edges) in {work} ...", flush=True)
    stack.start()
    rows: list[dict] = []
    try:
        wav = say_to_wav("Where is my order four two one nine?", work / "q.wav", lead_silence=1.0, tail_silence=0.5)
        b = Bench(stack, wav)
        asyncio.run(call(str(wav), url=stack.edge_url))  # warm-up, not counted
        for kind in kinds:
            for i in range(args.runs):
                row = b.one(kind)
                rows.append(row)
                print(f"{kind:12s} run {i + 1:2d}: " + " ".join(f"{k}={row[k]}" for k in row if k not in ("kind", "said")), flush=True)
                b.restore(row["killed"])
    finally:
        stack.stop()
    summary = summarize(rows, kinds)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "runs": rows, "cores": os.cpu_count(), "measured": time.strftime("%Y-%m-%d")}, indent=1))
    print(f"\nper-run rows: {out}")


def summarize(rows: list[dict], kinds: list[str]) -> dict:
    print("\nrecovery after a SIGKILL, measured at the client (ms):")
    summary = {}
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        line = {"runs": len(rs), "lost_turns": sum(r["lost"] for r in rs), "duplicated": sum(r["duplicated"] for r in rs),
                "incomplete_calls": sum(not r["completed"] for r in rs), "wrong_answers": sum(r.get("wrong_answer", 0) for r in rs)}
        for key in ("recovery_ms", "next_clause_ms", "detect_ms", "reattach_ms"):
            xs = [r[key] for r in rs if r.get(key) is not None]
            if xs:
                line[key] = {"p50": pct(xs, 50), "p95": pct(xs, 95), "max": max(xs), "n": len(xs)}
        if kind == "edge":
            line["resaid_clauses"] = sum(r["resaid_clauses"] for r in rs)
        summary[kind] = line
        figs = "  ".join(f"{k} p50 {v['p50']} p95 {v['p95']} (n={v['n']})" for k, v in line.items() if isinstance(v, dict))
        print(f"  {kind:12s} {figs}  lost {line['lost_turns']}  duplicated {line['duplicated']}  incomplete {line['incomplete_calls']}"
              f"  wrong answers {line['wrong_answers']}" + (f"  clauses re-said {line['resaid_clauses']}" if kind == "edge" else ""))
    return summary


if __name__ == "__main__":
    sys.exit(main())
