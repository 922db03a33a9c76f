"""voxmesh command line: `voxmesh call FILE.wav`, `voxmesh up`."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import signal
import sys
import time


def _call(args: argparse.Namespace) -> int:
    from voxmesh_cli.call import call

    result = asyncio.run(
        call(
            args.file, url=args.url.rstrip("/"), out=args.out, timeout=args.timeout,
            ice_hosts=tuple(h for h in args.ice_hosts.split(",") if h),
            barge_in=args.barge_in, barge_in_after_ms=args.barge_in_after, receive_prefetch=args.jitter_frames,
            then=args.then or (), reconnect=args.reconnect,
        )
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"you said:   {result['user_transcript']}")
        print(f"agent said: {result['agent_text']}")
        print(f"first audio after you stopped: {result['ttfa_ms']} ms")
        if "bargein_stop_ms" in result:
            print(f"agent stopped {result['bargein_stop_ms']} ms after you barged in")
        for r in result["reconnects"]:
            print(f"reconnected ({r['reason']}) to {r['url']} in {round((r['connected_at'] - r['lost_at']) * 1000)} ms")
        print(f"reply recorded to {result['reply_wav']}")
    return 0 if result["completed"] else 1


def _up(args: argparse.Namespace) -> int:
    from voxmesh_cli.stack import Stack

    stack = Stack(pathlib.Path(args.workdir), fixed_ports=True)
    print("starting redis and the five services (models load once, ~10-30 s)...", flush=True)
    try:
        stack.start()
    except Exception as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        for name in stack.procs:
            print(f"--- {name} ---\n{stack.logs(name)}", file=sys.stderr)
        stack.stop()
        return 1
    print(f"\nvoxmesh is up. Open {stack.edge_url}/ and press Talk,")
    print(f"or from another terminal: .venv/bin/voxmesh call some.wav --url {stack.edge_url}")
    print(f"logs: {args.workdir}/*.log   metrics: {', '.join(stack.metrics_urls.values())}")
    print("Ctrl-C stops everything.", flush=True)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            for name, p in stack.procs.items():
                if p.popen and p.popen.poll() is not None:
                    print(f"{name} exited ({p.popen.returncode}); last log lines:\n{stack.logs(name)}", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        print("\nstopping...", flush=True)
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="voxmesh")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("call", help="play a WAV file to the agent over WebRTC and record its reply")
    c.add_argument("file")
    c.add_argument("--url", default="http://127.0.0.1:8080", help="the edge, or several comma separated (reconnects try the others)")
    c.add_argument("--out", help="where to write the agent's reply (WAV)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--timeout", type=float, default=60.0)
    c.add_argument("--ice-hosts", default="127.0.0.1", help="local ICE host addresses, comma separated ('' = all interfaces)")
    c.add_argument("--barge-in", help="a second WAV to play over the agent's reply")
    c.add_argument("--barge-in-after", type=int, default=1000, metavar="MS", help="ms after the agent's first audio")
    c.add_argument("--jitter-frames", type=int, default=1, metavar="N",
                   help="20 ms frames the receive jitter buffer holds before playing (aiortc default 4; a browser keeps ~1-2 here)")
    c.add_argument("--then", action="append", metavar="WAV", help="another turn, played after the previous reply (repeatable)")
    c.add_argument("--reconnect", action="store_true",
                   help="on a lost connection or a `move` from a draining edge, reattach to the conversation with its resume token")
    c.set_defaults(fn=_call)
    u = sub.add_parser("up", help="run Redis and the five services locally")
    u.add_argument("--workdir", default=".run")
    u.set_defaults(fn=_up)
    args = parser.parse_args(argv)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
