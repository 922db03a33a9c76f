"""The edge's preStop drain hook, run for real against a stand-in edge on
loopback: it POSTs the drain, waits for the live sessions to end (read from
/metrics), waits at least preStopDelaySeconds, and never longer than the drain
grace + 1 s."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time

import pytest

import chartlib
from chartlib import component, named, pod_spec

pytestmark = pytest.mark.chart


class FakeEdge(http.server.BaseHTTPRequestHandler):
    sessions = 2.0
    drained_at: float | None = None
    drop_after = 0.8  # seconds after the drain until the sessions end; None = never

    def log_message(self, *args):
        pass

    def do_POST(self):
        if self.path == "/v1/admin/drain":
            type(self).drained_at = time.monotonic()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"draining": true}')
        else:
            self.send_error(404)

    def do_GET(self):
        if self.path != "/metrics":
            self.send_error(404)
            return
        cls = type(self)
        live = cls.sessions
        if cls.drained_at is not None and cls.drop_after is not None and time.monotonic() - cls.drained_at > cls.drop_after:
            live = 0.0
        body = f"# TYPE voxmesh_active_sessions gauge\nvoxmesh_active_sessions {live}\n".encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_edge():
    FakeEdge.drained_at = None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeEdge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _prestop(port: int, delay: int) -> list[str]:
    docs = chartlib.render_with(sets=(f"mediaEdge.httpPort={port}", f"mediaEdge.drain.preStopDelaySeconds={delay}"))
    sts = named(docs, "StatefulSet", component("media-edge"))
    return pod_spec(sts)["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]


def _run(cmd: list[str], grace: float) -> float:
    assert cmd[0] == "python"
    env = dict(os.environ, VOXMESH_EDGE_DRAIN_GRACE_S=str(grace))
    start = time.monotonic()
    subprocess.run([sys.executable, *cmd[1:]], env=env, check=True, timeout=60)
    return time.monotonic() - start


def test_prestop_returns_once_sessions_end(helm, fake_edge):
    FakeEdge.drop_after = 0.8
    took = _run(_prestop(fake_edge, delay=2), grace=20)
    assert FakeEdge.drained_at is not None, "the hook did not POST /v1/admin/drain"
    assert 2 <= took < 6, f"took {took:.1f}s"


def test_prestop_waits_at_most_the_drain_grace(helm, fake_edge):
    FakeEdge.drop_after = None  # sessions never end
    took = _run(_prestop(fake_edge, delay=1), grace=2)
    assert 2.5 <= took < 6, f"took {took:.1f}s"
