"""In-flight coalescing and supervised background tasks: the two asyncio patterns every
layer needs, written once.

:class:`SingleFlight` runs one task per key however many callers ask while it runs. Each
caller awaits the shared task through a future of its own (as :func:`asyncio.shield`
does), so a caller that is cancelled (a Postfix connection gone, a policyctl timeout) does
not cancel the work the others wait for. The entry disappears when the task ends, whatever
the outcome; a failure reaches every waiting caller and is not remembered.
:meth:`SingleFlight.run_here` does the same with the first caller's own task doing the
work (no task of its own), handed to a task if that caller is cancelled.

:class:`TaskSet` holds background tasks (the event loop keeps only a weak reference to a
task) and logs any that dies with an exception, so nothing dies silently.

Imports nothing from policyd: any layer that may use asyncio may use these.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["SingleFlight", "TaskSet", "pass_on"]


class SingleFlight(Generic[K, V]):
    """One running task per key; callers of the same key share its result."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        # A task per key; or a future whose work runs without a task (see adopt).
        self._tasks: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def task(self, key: K, factory: Callable[[], Coroutine[Any, Any, V]]) -> asyncio.Future[V]:
        """The running work for ``key``, a task started from ``factory()`` if there is none."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(factory())
            self.adopt(key, task)
        return task

    def adopt(self, key: K, future: asyncio.Future[V]) -> None:
        """Make ``future`` the work for ``key`` (which has none): for work driven by
        callbacks, without a task. ``cancel_all`` cancels it like a task."""
        assert key not in self._tasks
        self._tasks[key] = future
        future.add_done_callback(lambda done: self._drop(key, done))

    def get(self, key: K) -> asyncio.Future[V] | None:
        """The work running for ``key``, if any."""
        return self._tasks.get(key)

    async def run(self, key: K, factory: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The result of the one task for ``key``; cancelling this caller leaves it running.

        What :func:`asyncio.shield` does, with a third of its objects (one future and one
        callback per caller): every cold lookup passes here several times."""
        task = self.task(key, factory)
        if task.done():
            return task.result()
        waiter: asyncio.Future[V] = task.get_loop().create_future()
        settle = functools.partial(pass_on, waiter)
        task.add_done_callback(settle)
        try:
            return await waiter
        except asyncio.CancelledError:
            task.remove_done_callback(settle)  # this caller left (or the task was cancelled)
            raise

    async def run_here(self, key: K, factory: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """:meth:`run`, with the work done in this caller's own task when none is under
        way for ``key``: a task, a waiter and two callbacks fewer for the usual caller,
        who has the key to itself. Callers arriving meanwhile wait on a future, as on a
        task. If this caller is cancelled, a task takes the work up again from the start
        (for those waiting and those to come: the work must be safe to repeat), so that
        it still completes, as :meth:`run`'s shielded task would."""
        tasks = self._tasks
        if key in tasks:
            return await self.run(key, factory)
        shared: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        tasks[key] = shared  # no _drop callback: this caller takes it off when done
        try:
            result = await factory()
        except asyncio.CancelledError:
            if not shared.done():  # else cancel_all() ended it: nothing to take up
                self._end(key, shared)
                self.task(key, factory).add_done_callback(functools.partial(pass_on, shared))
            raise
        except BaseException as exc:
            if not shared.done():
                shared.set_exception(exc)  # raised here too: _drop marks it retrieved
                self._drop(key, shared)
            raise
        if not shared.done():
            shared.set_result(result)
            self._drop(key, shared)
        return result

    def _end(self, key: K, work: asyncio.Future[V]) -> None:
        if self._tasks.get(key) is work:
            del self._tasks[key]

    def forget(self, key: K) -> None:
        """The next caller of ``key`` starts new work; a task already running finishes for
        the callers waiting on it."""
        self._tasks.pop(key, None)

    def cancel_all(self) -> None:
        """Cancel every running task (shutdown, or a cache generation that is thrown away)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()

    def _drop(self, key: K, done: asyncio.Future[V]) -> None:
        self._end(key, done)
        if not done.cancelled():
            done.exception()  # retrieved: the waiters got it; no "never retrieved" warning


def pass_on(waiter: asyncio.Future[V], task: asyncio.Future[V]) -> None:
    """Pass the outcome of ``task`` to ``waiter`` (one caller waiting for it), unless the
    waiter is done already (the caller left)."""
    if waiter.done():
        return
    if task.cancelled():
        waiter.cancel()
    elif (exc := task.exception()) is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(task.result())


class TaskSet:
    """Background tasks held until they end; one that fails is logged, with its name."""

    __slots__ = ("_log", "_tasks")

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("background task %s failed", task.get_name(), exc_info=exc)

    async def cancel_all(self) -> None:
        """Cancel every task and wait for all of them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
