"""Waiting in async tests for something another task or process does."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, every: float = 0.01) -> None:
    """Poll `pred` (plain or async) until it is true; AssertionError after `timeout` s.

    Wait on the effect a test asserts (a log line, a client's state), not on a
    counter of the side that causes it: the effect may come a moment later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ok = pred()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s")
        await asyncio.sleep(every)
