"""Small asyncio helpers used by several services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


def spawn(coro: Coroutine[Any, Any, Any], tasks: set[asyncio.Task], name: str | None = None) -> asyncio.Task:
    """Start a task that is tracked in `tasks` (so it can be cancelled) and whose
    unexpected failure is logged once instead of vanishing."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    tasks.add(task)

    def _done(t: asyncio.Task) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("task failed", exc_info=t.exception(), extra={"task": t.get_name()})

    task.add_done_callback(_done)
    return task


async def cancel_all(tasks: set[asyncio.Task] | list[asyncio.Task]) -> None:
    pending = [t for t in list(tasks) if not t.done()]
    for t in pending:
        t.cancel()
    for t in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
