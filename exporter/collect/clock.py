"""Noticing that the wall clock stepped, or that the process stood still.

APScheduler 3 plans every run on the wall clock (``datetime.now()``) but waits on the event
loop's monotonic clock. When the wall clock steps (an NTP step, a VM restored from a snapshot,
an operator's ``date -s``), the two disagree: after a step back of 600 s every job's next run
lies 600 s further in the future than its interval says, and nothing runs for 600 s, without an
error or a skipped tick to show for it. A forward step makes the runs that fall inside it
misfire.

``ClockWatch`` keeps the offset between ``time.time()`` and ``time.monotonic()`` (constant
while nothing steps: NTP *slewing* moves it by at most 0.5 ms per second) and reports a change
of more than ``threshold`` as a step; the scheduler (``exporter.collect.scheduler``) then moves
every job's next run by the step, so each run stays where the monotonic clock had it. The check
runs before the scheduler looks for due jobs (so it never acts on a stepped clock) and on a
one-second watchdog (so a step is logged and counted when it happens, not at the next tick).

It also notices the process standing still: a watchdog tick that fires much later than
planned means the process was frozen (SIGSTOP, a paused VM) or starved of CPU, which is the
real reason a tick finds the previous run still going afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A change of the wall clock's offset from the monotonic clock larger than this is a step.
STEP_THRESHOLD = 1.0
# How often the watchdog looks when nothing else made it look.
WATCH_PERIOD = 1.0
# Two clock reads further apart than this were interrupted (the process stopped between them).
READ_SLACK = 0.05
# A watchdog tick this much later than planned means the process stood still.
STALL_THRESHOLD = 1.0


@dataclass(frozen=True)
class Jump:
    """A wall-clock step or a stall of the process, and when (monotonic) it was noticed."""

    kind: str  # "step" or "stall"
    seconds: float  # the step (negative: backwards), or how late the watchdog ran
    noticed: float

    def describe(self) -> str:
        if self.kind == "step":
            direction = "back" if self.seconds < 0 else "forward"
            return f"the wall clock stepped {direction} by {abs(self.seconds):.1f}s"
        return (
            f"the process stood still (its clock watchdog ran {self.seconds:.1f}s late: "
            "frozen, suspended or starved of CPU)"
        )


def explain(jumps: Sequence[Jump]) -> str:
    """One reason naming every jump, in the order they were noticed."""
    return " and ".join(jump.describe() for jump in jumps)


class ClockWatch:
    """Compares the wall clock with the monotonic clock; see the module docstring."""

    def __init__(
        self,
        on_step: Callable[[float], None],
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_step = on_step
        self._wall = wall
        self._monotonic = monotonic
        self._offset = wall() - monotonic()
        self._due: float | None = None  # when the watchdog's next tick is planned
        self._timer: asyncio.TimerHandle | None = None
        self.jumps: list[Jump] = []  # the most recent few, newest last

    def check(self) -> float | None:
        """Look now: returns the step (seconds, negative when backwards) if the wall clock
        stepped since the last look, after calling ``on_step`` with it. A watchdog tick
        overdue by more than ``STALL_THRESHOLD`` is remembered as a stall (once)."""
        now, wall = self._read()
        if self._due is not None and now - self._due > STALL_THRESHOLD:
            self._remember(Jump("stall", now - self._due, now))
            self._due = None  # reported; the tick plans the next one
        offset = wall - now
        step = offset - self._offset
        # The baseline follows every look, so slewing never adds up to a "step".
        self._offset = offset
        if abs(step) <= STEP_THRESHOLD:
            return None
        self._remember(Jump("step", step, now))
        self._on_step(step)
        return step

    def recent(self, within: float) -> list[Jump]:
        """Every step and stall noticed in the last ``within`` seconds, oldest first: a VM
        paused and resumed both stands still and finds its wall clock stepped, and a reason
        that named only one of them would hide the other."""
        now = self._monotonic()
        return [jump for jump in self.jumps if now - jump.noticed <= within]

    def _read(self) -> tuple[float, float]:
        """Both clocks at one moment: a process stopped between the two reads (SIGSTOP, a
        paused VM) would otherwise see the length of its stop as a step of the wall clock.
        Read again until the monotonic clock barely moved across the wall clock's read."""
        for _ in range(3):
            before = self._monotonic()
            wall = self._wall()
            after = self._monotonic()
            if after - before < READ_SLACK:
                break
        return after, wall - (after - before) / 2

    def start(self) -> None:
        """Start the watchdog on the running loop."""
        self._plan(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _plan(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = self._monotonic() + WATCH_PERIOD
        self._timer = loop.call_later(WATCH_PERIOD, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.check()
        self._plan(loop)

    def _remember(self, jump: Jump) -> None:
        self.jumps = [*self.jumps[-7:], jump]
