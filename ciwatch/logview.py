"""`ciwatch logs`: print a run's logs step by step, or follow them live."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from ciwatch.console import fmt_cpu, fmt_mem
from ciwatch.logread import follow as follow_log
from ciwatch.logread import read_log, render
from ciwatch.model import Run, StepRecord, StepState


def _header(s: StepRecord) -> str:
    cell = f" [{s.cell}]" if s.cell else ""
    state = s.state.value
    if s.result.reason and s.state not in (StepState.SUCCESS, StepState.RUNNING):
        state += f": {s.result.reason}"
    used = []
    if s.result.cpu_seconds is not None:
        used.append(f"cpu {fmt_cpu(s.result.cpu_seconds)}")
    if s.result.max_rss_kib is not None:
        used.append(f"mem {fmt_mem(s.result.max_rss_kib)}")
    if used:
        state += "; " + ", ".join(used)
    return f"── {s.name}{cell} ({state}) ──"


def _select(steps: list[StepRecord], step: str | None) -> list[StepRecord]:
    if step is None:
        return steps
    return [s for s in steps if s.name == step or str(s.index) == step]


def show_logs(
    store, run: Run, *, step: str | None, follow: bool, out: TextIO, poll: float = 0.3
) -> None:
    shown: set[int] = set()
    setup_shown = False
    removed = store.logs_removed(run.id)  # by retention: the steps are listed, not their logs
    if removed:
        out.write(f"{run.label}: {removed}\n")
    while True:
        run = store.get_run(run.id)
        steps = _select(store.steps(run.id), step)
        logged = [s for s in steps if s.log_path]
        if not setup_shown and step is None and logged:
            setup = Path(logged[0].log_path).parent / "setup.log"
            lines = list(read_log(setup)) if setup.exists() else []
            if lines:
                out.write("── setup ──\n")
                for line in lines:
                    out.write(render(line) + "\n")
            setup_shown = True
        for s in steps:
            if s.id in shown or s.state is StepState.PENDING:
                continue
            if s.state is StepState.RUNNING and not follow:
                continue
            out.write(_header(s) + "\n")
            path = Path(s.log_path) if s.log_path else None
            if path is None:  # skipped or canceled before it started: no log
                lines = iter(())
            elif s.state is StepState.RUNNING:
                done = lambda sid=s.id, rid=run.id: _finished(store, rid, sid)  # noqa: E731
                lines = follow_log(path, done, poll=poll)
            else:
                lines = read_log(path) if path.is_file() else iter(())
            for line in lines:
                out.write(render(line) + "\n")
                out.flush()
            shown.add(s.id)
        if not follow or run.state.finished:
            if follow and any(s.id not in shown for s in _select(store.steps(run.id), step)):
                continue
            break
        time.sleep(poll)
    if not shown and step is not None:
        out.write(f"{run.label}: no step {step!r}\n")
    out.write(f"{run.label}: {run.state.value}{': ' + run.reason if run.reason else ''}\n")


def _finished(store, run_id: int, step_id: int) -> bool:
    for s in store.steps(run_id):
        if s.id == step_id:
            return s.state is not StepState.RUNNING
    return True
