"""The bounded, prioritised work queue behind MTA-STS discovery and refresh.

A slow domain holds a fetch slot for up to the TXT lookup's lifetime plus the HTTPS
``fetch_timeout``, and any domain owner can make theirs slow. With one first-come queue,
a few hundred such domains kept the first lookup of a real MTA-STS domain waiting past
``cold_budget`` (so the default profile answered without the policy) and held back the
refreshes of cached policies (security review H3). So work is served by lane:

1. ``REFRESH``: a cached policy is due (its TXT id to re-read, or a refetch). Keeping a
   policy in force comes first (RFC 8461 5.1: refresh before expiry).
2. ``WAITED``: discovery of a domain a lookup is waiting for right now.
3. ``BACKGROUND``: discovery whose lookups stopped waiting (after ``cold_budget``).

A job becomes ``BACKGROUND`` when its last waiter leaves, queued or running. When a
``REFRESH`` or ``WAITED`` job finds every slot busy, the ``BACKGROUND`` job that has run
longest is stopped and queued again at the back of its lane (its domain is tried from
scratch later), so the urgent job starts at once: a real domain whose policy arrives
within ``cold_budget`` is cached on its first lookup however many slow domains are
queued. Lanes are first come, first served.

At most ``max_queued`` jobs wait. An urgent job that finds the queue full drops the
oldest ``BACKGROUND`` job; when there is none, or for a new ``BACKGROUND`` job, the new
job is refused: its future fails with :class:`FetchQueueFull` and the domain is tried
again on its next lookup.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Work = Callable[[], Awaitable[None]]


class Lane(enum.IntEnum):
    """Served in this order (lower first)."""

    REFRESH = 0
    WAITED = 1
    BACKGROUND = 2


class FetchQueueFull(Exception):
    """The job was not queued, or was dropped from the queue to make room."""


@dataclass(eq=False, slots=True)
class _Job:
    key: str
    lane: Lane
    work: Work  # called anew for each run: a preempted job starts over
    done: asyncio.Future[None]
    queued_at: float = 0.0  # monotonic seconds when it (last) became urgent or queued
    task: asyncio.Task[None] | None = None
    started: float = 0.0  # monotonic seconds when the current run began
    preempted: bool = False  # its task was cancelled to free the slot; queue it again


@dataclass(frozen=True, slots=True)
class QueueStats:
    running: int
    queued: int
    dropped: int  # jobs refused or dropped because the queue was full, since start
    preempted: int  # background runs stopped for urgent work, since start


class FetchQueue:
    def __init__(
        self,
        slots: int,
        max_queued: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1 or max_queued < 1:
            raise ValueError("a fetch queue needs at least one slot and one queue place")
        self.slots = slots
        self.max_queued = max_queued
        self._monotonic = monotonic
        # Per lane, insertion-ordered: the first job is the oldest.
        self._queued: dict[Lane, dict[str, _Job]] = {lane: {} for lane in Lane}
        self._running: dict[str, _Job] = {}
        self._dropped = 0
        self._preempted = 0
        self._pump_scheduled = False

    # -- the interface --------------------------------------------------------------------

    def submit(self, key: str, lane: Lane, work: Work) -> asyncio.Future[None]:
        """Queue ``work`` for ``key``; a job already queued or running for the key is
        joined (and moved up to ``lane`` if that is more urgent). The future completes
        when the work has run; it fails with FetchQueueFull if the job was not run."""
        job = self._find(key)
        if job is not None:
            if lane < job.lane:
                self._move(job, lane)
                self._pump()
            return job.done
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._full() and not self._make_room(lane):
            self._dropped += 1
            done.set_exception(FetchQueueFull(f"{self.max_queued} fetches already queued"))
            return done
        job = _Job(key, lane, work, done, queued_at=self._monotonic())
        self._queued[lane][key] = job
        done.add_done_callback(functools.partial(self._cancelled_outside, job))
        self._pump()
        return done

    def demote(self, key: str) -> None:
        """Nobody waits for ``key``'s discovery any more: it is background work now."""
        job = self._find(key)
        if job is not None and job.lane is Lane.WAITED:
            self._move(job, Lane.BACKGROUND)
            self._pump()

    def stats(self) -> QueueStats:
        return QueueStats(len(self._running), self._queued_count(), self._dropped, self._preempted)

    # -- scheduling -----------------------------------------------------------------------

    def _queued_count(self) -> int:
        return sum(len(jobs) for jobs in self._queued.values())

    def _full(self) -> bool:
        """max_queued jobs wait for a slot (jobs about to take a free slot do not wait)."""
        free = max(0, self.slots - len(self._running))
        return self._queued_count() - free >= self.max_queued

    def _find(self, key: str) -> _Job | None:
        running = self._running.get(key)
        if running is not None:
            return running
        for jobs in self._queued.values():
            if key in jobs:
                return jobs[key]
        return None

    def _move(self, job: _Job, lane: Lane) -> None:
        if self._running.get(job.key) is not job:
            del self._queued[job.lane][job.key]
            self._queued[lane][job.key] = job
            job.queued_at = self._monotonic()
        job.lane = lane

    def _make_room(self, lane: Lane) -> bool:
        """Drop the oldest background job for a more urgent one."""
        background = self._queued[Lane.BACKGROUND]
        if lane is Lane.BACKGROUND or not background:
            return False
        oldest = next(iter(background.values()))
        del background[oldest.key]
        self._dropped += 1
        if not oldest.done.done():
            oldest.done.set_exception(FetchQueueFull("dropped for more urgent fetches"))
        return True

    def _next(self) -> _Job | None:
        for lane in Lane:
            jobs = self._queued[lane]
            if jobs:
                return next(iter(jobs.values()))
        return None

    def _pump(self) -> None:
        """Start or preempt on the loop's next turn, once for everything that changed in
        this one: lookups that gave up together are all demoted before anything is
        stopped for a job whose own lookup is about to give up as well."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_now)

    def _pump_now(self) -> None:
        self._pump_scheduled = False
        while (job := self._next()) is not None:
            if len(self._running) < self.slots:
                self._start(job)
            elif job.lane is not Lane.BACKGROUND:
                self._preempt_for_urgent()
                return
            else:
                return

    def _preempt_for_urgent(self) -> None:
        """Stop background runs, longest running first, to give queued urgent jobs a slot.

        Only a run that began before the urgent job was queued yields to it: discoveries
        looked up together, whose lookups give up together, do not stop one another."""
        urgent = [*self._queued[Lane.REFRESH].values(), *self._queued[Lane.WAITED].values()]
        stopping = sum(1 for j in self._running.values() if j.preempted)
        candidates = sorted(
            (j for j in self._running.values() if j.lane is Lane.BACKGROUND and not j.preempted),
            key=lambda j: j.started,
        )
        for job in urgent[stopping:]:
            if not candidates or candidates[0].started >= job.queued_at:
                continue
            victim = candidates.pop(0)
            victim.preempted = True
            self._preempted += 1
            assert victim.task is not None
            victim.task.cancel()

    def _start(self, job: _Job) -> None:
        del self._queued[job.lane][job.key]
        self._running[job.key] = job
        job.started = self._monotonic()
        job.preempted = False
        job.task = asyncio.get_running_loop().create_task(
            self._run(job.work), name=f"mta-sts {job.key}"
        )
        job.task.add_done_callback(functools.partial(self._finished, job))

    @staticmethod
    async def _run(work: Work) -> None:
        await work()

    def _finished(self, job: _Job, task: asyncio.Task[None]) -> None:
        if self._running.get(job.key) is job:
            del self._running[job.key]
        job.task = None
        if job.done.done():  # cancelled from outside: nothing to report
            pass
        elif task.cancelled():
            if job.preempted:  # to the back of its lane, to run again later
                self._queued[job.lane][job.key] = job
                job.queued_at = self._monotonic()
            else:
                job.done.cancel()
        elif (exc := task.exception()) is not None:
            job.done.set_exception(exc)
        else:
            job.done.set_result(None)
        self._pump()

    def _cancelled_outside(self, job: _Job, done: asyncio.Future[None]) -> None:
        """``done.cancel()`` by a caller (flush): forget the job, stop its run."""
        if not done.cancelled():
            return
        self._queued[job.lane].pop(job.key, None)
        if self._running.get(job.key) is job:
            del self._running[job.key]  # the slot is free; the run ends in a moment
        if job.task is not None:
            job.task.cancel()
        self._pump()
