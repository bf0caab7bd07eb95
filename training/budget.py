"""The time budget: when a part must stop so that its hand-off is on disk before the deadline.

The budget counts from the process's start (train_part.py's STARTED), not from the first step, so
start-up (imports, data, a checkpoint to load) is paid from it too. It learns what it must leave
room for as the part runs: the slowest recent step, the slowest save (first estimated by timing a
real write of the same size), the slowest evaluation; and where the wall time went, for the
summary a part ends with.
"""

import math
import time
from collections import deque


class TimeBudget:
    """Decides when to stop so the final save completes before the deadline. It learns what it must
    leave room for as it happens: the slowest recent step, the slowest save (first estimated by
    timing a real write of the same size), the slowest evaluation."""

    def __init__(self, hours, started):
        self.started = started
        self.seconds = None if hours is None else hours * 3600.0
        self.deadline = None if hours is None else time.monotonic() - (time.time() - started) + self.seconds
        # Room for what cannot be measured in advance (printing, process exit, a stray slow step).
        self.margin = 0.0 if hours is None else min(60.0, max(2.0, 0.005 * self.seconds))
        self.first_step = None        # a process's first step pays one-off warm-up costs
        self.recent_steps = deque(maxlen=20)
        self.save_seconds = 0.0       # the slowest save so far (or the first estimate)
        self.eval_seconds = 0.0       # the slowest evaluation so far
        self.spent = {"steps": 0.0, "evaluation": 0.0, "saving": 0.0}  # where the wall time went
        self.first_step_at = None     # seconds from process start to the first step
        self.steady = {"steps": 0, "seconds": 0.0, "work": 0.0}  # the steps after the first, and their work

    def note_first_step(self):
        """The first step starts now: start-up took until here."""
        self.first_step_at = time.time() - self.started

    def expect_save(self, seconds):
        """A save's cost before one has been timed (ckpt.estimate_write_seconds writes the same bytes)."""
        self.save_seconds = max(self.save_seconds, seconds)

    def left(self):
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def observe_step(self, seconds, work=0.0):
        """A step took `seconds` and did `work` (tokens, seconds of audio, rows: the task's unit)."""
        self.spent["steps"] += seconds
        if self.first_step is None:
            self.first_step = seconds
        else:
            self.recent_steps.append(seconds)
            self.steady.update(steps=self.steady["steps"] + 1, seconds=self.steady["seconds"] + seconds,
                               work=self.steady["work"] + work)

    def pace(self):
        """(seconds a step, work a second) over the steps after the first, or None before a second step."""
        steps, seconds = self.steady["steps"], self.steady["seconds"]
        return (seconds / steps, self.steady["work"] / seconds) if steps and seconds > 0 else None

    def observe_save(self, seconds):
        self.spent["saving"] += seconds
        self.save_seconds = max(self.save_seconds, seconds)

    def observe_eval(self, seconds):
        self.spent["evaluation"] += seconds
        self.eval_seconds = max(self.eval_seconds, seconds)

    def step_estimate(self):
        return 1.25 * max(self.recent_steps, default=self.first_step or 0.0)

    def room_for_step(self):
        return self.left() > self.step_estimate() + 1.5 * self.save_seconds + self.margin

    def room_for_eval(self):
        return self.left() > self.eval_seconds + self.step_estimate() + 1.5 * self.save_seconds + self.margin

    def can_continue_eval(self):
        return self.left() > 1.5 * self.save_seconds + self.margin

    def summary(self, elapsed, speed="", compiled=False):
        """Where the part's wall time went, and how early the hand-off landed before the deadline. The
        steps' time is split into the first step (warm-up, and compilation with torch.compile, which a
        step time must not hide) and the steady time a step after it, with `speed` (the task's
        throughput, and MFU on a GPU: train_part.py's speed) appended to that."""
        parts = [f"{name} {seconds:.1f} s ({seconds / elapsed:.1%}" for name, seconds in self.spent.items()]
        if self.pace() is not None:
            parts[0] += (f"; first step {self.first_step:.1f} s with warm-up{' and compilation' if compiled else ''}, "
                         f"then {format_duration(self.pace()[0])} a step{speed}")
        parts = [part + ")" for part in parts]
        line = (f"time: {elapsed:.1f} s wall; start-up until the first step {self.first_step_at or elapsed:.1f} s; "
                f"{', '.join(parts)}")
        if self.deadline is not None:
            line += f"; hand-off written {self.left():.1f} s before the deadline"
        return line


def format_duration(seconds):
    """A step's time: '14.1 ms', '1.52 s'."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_seconds(s):
    if s == math.inf:
        return "inf"
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
