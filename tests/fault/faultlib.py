"""Helpers of the fault suite (tests/fault): the running cluster and checks."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
import urllib.request

import redis

from voxmesh.testing.speech import say_to_wav


class Cluster:
    def __init__(self, stack, workdir: pathlib.Path) -> None:
        self.stack = stack
        self.workdir = workdir
        self.redis = redis.Redis.from_url(stack.redis_url, decode_responses=True)

    # ---- speech and calls ----------------------------------------------------

    def speech(self, text: str, name: str) -> pathlib.Path:
        path = self.workdir / f"{name}.wav"
        if not path.exists():
            say_to_wav(text, path, lead_silence=1.0, tail_silence=0.5)
        return path

    def call(self, wav, urls: list[str] | None = None, **kw) -> dict:
        from voxmesh_cli.call import call

        url = ",".join(urls or [self.stack.edge_url])
        kw.setdefault("timeout", 90)
        return asyncio.run(call(str(wav), url=url, **kw))

    # ---- who serves a session ------------------------------------------------

    def serving_orchestrator(self, sid: str) -> str:
        """The process name of the orchestrator replica serving `sid` (it
        records its pod name, orchestrator-<i>, in the session's meta)."""
        pod = self.redis.hget(f"vm:s:{sid}:meta", "orchestrator") or ""
        i = int(pod.rsplit("-", 1)[-1])
        return self.stack.names("orchestrator")[i]

    def serving_stt(self) -> str:
        """The stt replica with an open stream (the fault tests run one call at a time)."""
        for name in self.stack.names("stt"):
            p = self.stack.procs[name]
            if not self.stack.alive(name):
                continue
            text = urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=2).read().decode()
            for line in text.splitlines():
                if line.startswith("voxmesh_stt_active_streams ") and float(line.split()[1]) > 0:
                    return name
        raise AssertionError("no stt replica has an open stream")

    def edge_proc(self, member: str) -> str:
        """The process name of edge member `edge-<i>` (the X-Voxmesh-Edge header)."""
        return self.stack.names("edge")[int(member.rsplit("-", 1)[-1])]

    def history(self, sid: str) -> list[dict]:
        return [json.loads(m) for m in self.redis.lrange(f"vm:s:{sid}:history", 0, -1)]

    # ---- putting things back -------------------------------------------------

    def restore(self, *names: str) -> None:
        """Restart what a test killed, and give the edges' channels time to
        reconnect to it (their reconnect backoff is capped at 2 s)."""
        for name in names:
            if not self.stack.alive(name):
                self.stack.restart(name)
        if any(not n.startswith("edge") for n in names):
            time.sleep(2.5)

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.stack.logs(n, 25)}" for n in self.stack.procs)


def assert_no_duplicate_clauses(result: dict) -> None:
    """On each connection, every clause of a reply was said once and none is
    missing in between (a new edge after an edge loss starts at the first
    clause not heard whole)."""
    seen: dict[tuple[int, str], list[int]] = {}
    for e in result["events"]:
        if e["type"] == "agent_say":
            seen.setdefault((e["conn"], e["turn_id"]), []).append(e["clause_id"])
    for key, ids in seen.items():
        assert len(set(ids)) == len(ids) and max(ids) - min(ids) + 1 == len(ids), (key, ids)

