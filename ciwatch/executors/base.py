"""The executor interface: run one compiled step, return a StepResult.

Executors know nothing of YAML, the store or forges (the engine stays free of
everything above it). They get a compiled step, an explicit environment, a log
sink and a cancel token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ciwatch.model import StepResult
from ciwatch.pipeline.plan import PlanStep


@dataclass(frozen=True)
class StepSpec:
    step: PlanStep
    workdir: Path  # the checkout; the step's cwd
    env: Mapping[str, str]  # the complete environment; nothing else leaks in
    script_dir: Path  # private dir outside the workspace for the script file
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL


class LogSink(Protocol):
    """Where a step's output goes. Implementations mask secrets and cap size."""

    def write(self, data: bytes) -> None:
        """Raw output bytes, in order, any chunking (may split lines or secrets)."""

    def note(self, text: str) -> None:
        """A line of ciwatch's own (e.g. "timed out after 10s: SIGTERM sent")."""


class CancelToken:
    """Set from any thread to stop a step; the executor polls or waits on it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "canceled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


class Executor(Protocol):
    def run(self, spec: StepSpec, sink: LogSink, cancel: CancelToken) -> StepResult:
        """Run the step to completion and return what happened. Never raises for
        the step's own failure, nor when it cannot be started: that is a
        StepResult with state ERROR and failure INFRA (so `retry: {on: [infra]}`
        can act on it). Raises only for ciwatch's own bugs."""


Clock = Callable[[], float]
