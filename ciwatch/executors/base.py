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
    """Set from any thread to stop a run; executors poll `canceled` and `reason`.

    A *soft* cancel (a newer commit superseding the run) stops pending steps and
    interruptible ones; steps marked `interruptible: false` (a deploy) run on
    and only a hard cancel (a user, a shutdown) stops them.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._hard = threading.Event()
        self.reason = ""
        self.requeue = False  # an interruption: the run goes back to the queue

    def cancel(
        self, reason: str = "canceled", *, soft: bool = False, requeue: bool = False
    ) -> None:
        if not self._event.is_set() or not soft:
            self.reason = reason
        self.requeue = self.requeue or requeue
        self._event.set()
        if not soft:
            self._hard.set()

    @property
    def canceled(self) -> bool:
        return self._event.is_set()

    @property
    def hard(self) -> bool:
        return self._hard.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def for_step(self, interruptible: bool) -> CancelToken:
        """The token a step's executor watches."""
        return self if interruptible else _HardOnly(self)


class _HardOnly(CancelToken):
    """A view of a run's token that only a hard cancel sets."""

    def __init__(self, parent: CancelToken) -> None:
        self._parent = parent

    @property
    def reason(self) -> str:  # type: ignore[override]
        return self._parent.reason

    @property
    def canceled(self) -> bool:
        return self._parent.hard

    @property
    def hard(self) -> bool:
        return self._parent.hard

    def wait(self, timeout: float | None) -> bool:
        return self._parent._hard.wait(timeout)

    def cancel(
        self, reason: str = "canceled", *, soft: bool = False, requeue: bool = False
    ) -> None:
        self._parent.cancel(reason, soft=soft, requeue=requeue)


class Executor(Protocol):
    def run(self, spec: StepSpec, sink: LogSink, cancel: CancelToken) -> StepResult:
        """Run the step to completion and return what happened. Never raises for
        the step's own failure, nor when it cannot be started: that is a
        StepResult with state ERROR and failure INFRA (so `retry: {on: [infra]}`
        can act on it). Raises only for ciwatch's own bugs."""


Clock = Callable[[], float]
