"""Live terminal display of a run: step headers, output, progress, summary."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from ciwatch.model import Run, RunState, StepResult, StepState
from ciwatch.observer import RunObserver
from ciwatch.pipeline.plan import Plan, PlanStep

# Control sequences other than colour (SGR) could move the cursor, retitle the
# terminal or hide text: they are shown escaped, colours pass.
_UNSAFE = re.compile(r"\x1b(?!\[[0-9;]*m)|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]")

_MARK = {
    StepState.SUCCESS: "ok",
    StepState.FAILURE: "FAILED",
    StepState.ERROR: "ERROR",
    StepState.CANCELED: "canceled",
    StepState.SKIPPED: "skipped",
}


def safe_text(data: bytes) -> str:
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return _UNSAFE.sub(lambda m: repr(m.group(0))[1:-1], text)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def fmt_cpu(seconds: float | None) -> str:
    """CPU time: "0.4s", "12s", "2m05s"; "-" when not measured."""
    if seconds is None:
        return "-"
    return f"{seconds:.2g}s" if seconds < 1 else fmt_duration(seconds)


def fmt_mem(kib: int | None) -> str:
    """Peak memory in decimal units: "12 MB", "1.5 GB"; "-" when not measured."""
    if kib is None:
        return "-"
    size = kib * 1024
    if size >= 10**9:
        return f"{size / 10**9:.1f} GB"
    if size >= 10**6:
        return f"{size / 10**6:.0f} MB"
    return f"{max(1, round(size / 10**3))} kB"


class ConsoleObserver(RunObserver):
    def __init__(
        self,
        out: TextIO = sys.stdout,
        *,
        clock: Callable[[], float] = time.monotonic,
        progress_every: float = 10.0,
    ) -> None:
        self.out = out
        self.clock = clock
        self.progress_every = progress_every
        self.lock = threading.Lock()
        self.running: dict[tuple[str, int], list] = {}  # key -> [name, started, last_output]
        self.partial: dict[tuple[str, int], str] = {}
        self.rows: list[tuple[str, str, StepResult]] = []
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _label(self, plan: Plan, step: PlanStep) -> str:
        return f"{step.name} [{plan.label}]" if plan.label else step.name

    def run_started(self, run: Run, attempt: int) -> None:
        extra = f", attempt {attempt}" if attempt > 1 else ""
        with self.lock:
            self._print(f"ciwatch: {run.label} {run.sha[:12]} ({run.kind.value}{extra})")

    def note(self, run: Run, text: str) -> None:
        with self.lock:
            self._print(f"ciwatch: {text}")

    def step_started(self, run: Run, plan: Plan, step: PlanStep) -> None:
        now = self.clock()
        with self.lock:
            self.running[(plan.label, step.index)] = [self._label(plan, step), now, now]
            self._print(f"── {self._label(plan, step)} " + "─" * max(3, 60 - len(step.name)))

    def output(self, run: Run, plan: Plan, step: PlanStep, data: bytes) -> None:
        key = (plan.label, step.index)
        with self.lock:
            if key in self.running:
                self.running[key][2] = self.clock()
            text = self.partial.pop(key, "") + safe_text(data)
            *lines, rest = text.split("\n")
            if rest:
                self.partial[key] = rest
            prefix = f"[{self._label(plan, step)}] " if len(self.running) > 1 else ""
            for line in lines:
                self.out.write(f"{prefix}{line}\n")
            self.out.flush()

    def step_note(self, run: Run, plan: Plan, step: PlanStep, text: str) -> None:
        with self.lock:
            prefix = f"[{self._label(plan, step)}] " if len(self.running) > 1 else ""
            self._print(f"{prefix}ciwatch: {safe_text(text.encode())}")

    def step_finished(self, run: Run, plan: Plan, step: PlanStep, result: StepResult) -> None:
        key = (plan.label, step.index)
        with self.lock:
            if rest := self.partial.pop(key, ""):
                self._print(rest)
            self.running.pop(key, None)
            self.rows.append((self._label(plan, step), plan.label, result))
            mark = _MARK.get(result.state, result.state.value)
            if result.allowed_failure:
                mark += " (allowed)"
            why = (
                f": {result.reason}"
                if result.reason and result.state is not StepState.SUCCESS
                else ""
            )
            if result.state is StepState.SKIPPED or result.started_at is None:
                self._print(f"── {self._label(plan, step)}: {mark}{why}")
            else:
                self._print(
                    f"── {self._label(plan, step)}: {mark} in {fmt_duration(result.duration)}{why}"
                )

    def _tick(self) -> None:
        while not self._stop.wait(min(1.0, self.progress_every)):
            now = self.clock()
            with self.lock:
                for entry in self.running.values():
                    name, started, last = entry
                    if now - last >= self.progress_every:
                        self._print(f"   … {name} still running ({fmt_duration(now - started)})")
                        entry[2] = now

    def run_finished(self, run: Run, state: RunState, reason: str) -> None:
        self._stop.set()
        with self.lock:
            self._print(self.summary(run, state, reason))

    def summary(self, run: Run, state: RunState, reason: str) -> str:
        lines = []
        if self.rows:
            width = max(len(r[0]) for r in self.rows)
            lines.append("")
            lines.append(
                f"{'step':<{width}}  {'result':<18} {'time':>8} {'cpu':>7} {'mem':>7}  tries"
            )
            for name, _cell, res in self.rows:
                mark = _MARK.get(res.state, res.state.value) + (
                    " (allowed)" if res.allowed_failure else ""
                )
                tries = str(res.tries) if res.started_at is not None else "-"
                lines.append(
                    f"{name:<{width}}  {mark:<18} {fmt_duration(res.duration):>8}"
                    f" {fmt_cpu(res.cpu_seconds):>7} {fmt_mem(res.max_rss_kib):>7}  {tries:>5}"
                )
        total = fmt_duration((run.finished_at or 0) - run.started_at) if run.started_at else "-"
        tail = f": {reason}" if reason and state is not RunState.SUCCESS else ""
        lines.append(f"\n{run.label} {state.value} in {total}{tail}")
        lines.append(f"logs: ciwatch logs {run.id}")
        return "\n".join(lines)
