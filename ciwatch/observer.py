"""What a run reports as it goes, for live display (the CLI, later the web UI).

Orchestration calls these; the default does nothing. Output passed here is
already masked.
"""

from __future__ import annotations

from ciwatch.model import Run, RunState, StepResult
from ciwatch.pipeline.plan import Plan, PlanStep


class RunObserver:
    def run_started(self, run: Run, attempt: int) -> None: ...

    def note(self, run: Run, text: str) -> None: ...

    def step_started(self, run: Run, plan: Plan, step: PlanStep) -> None: ...

    def output(self, run: Run, plan: Plan, step: PlanStep, data: bytes) -> None: ...

    def step_note(self, run: Run, plan: Plan, step: PlanStep, text: str) -> None: ...

    def step_finished(self, run: Run, plan: Plan, step: PlanStep, result: StepResult) -> None: ...

    def run_finished(self, run: Run, state: RunState, reason: str) -> None: ...
