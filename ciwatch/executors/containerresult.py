"""What the end of a step's container means: state, failure, reason, exit code.

The engine client's exit status is the step's, except for the codes the
engine also uses for its own failures (125-127), which are checked against
the container's state, and for a shell that did not exist in the image (the
init reports it). Reasons are the process executor's ("exit code 3",
"timed out after 10s (SIGTERM)"), and name the limit a step ran into, as the
process executor does: the memory limit (the engine's OOM flag; an engine
that does not set it gets the limit named as the likely cause of a SIGKILL),
the CPU time limit (SIGXCPU) and the file size limit (SIGXFSZ).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from ciwatch.executors.engine import ContainerState, last_line
from ciwatch.executors.process import format_duration
from ciwatch.model import FailureKind, StepState
from ciwatch.pipeline.plan import PlanStep
from ciwatch.pipeline.resources import describe_limit

ENGINE_CODES = (125, 126, 127)  # the engine's own failures, or the step's exit code
SIGKILL_CODE = 128 + signal.SIGKILL
TAIL = 4096  # output kept for the engine's own messages
_INIT_FAILED = re.compile(rb"failed to exec pid1|\[FATAL tini \(\d+\)\] exec .* failed")


@dataclass
class Progress:
    """What the watch loop learned (mutable, local to one run)."""

    rc: int | None = None  # the engine client's exit status
    stop: FailureKind | None = None  # why we stopped it, if we did
    kill_sent: bool = False
    tail: bytes = b""  # the last output
    out_bytes: int = 0

    def saw(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-TAIL:]
        self.out_bytes += len(data)

    @property
    def ambiguous(self) -> bool:
        """Only these exit codes cost an `inspect`: the engine's own or SIGKILL's."""
        return self.stop is None and (self.rc in ENGINE_CODES or self.rc == SIGKILL_CODE)


@dataclass(frozen=True)
class Verdict:
    state: StepState
    failure: FailureKind | None = None
    reason: str = ""
    exit_code: int | None = None

    @property
    def infra(self) -> bool:
        return self.state is StepState.ERROR


def cannot_start(what: str) -> Verdict:
    return Verdict(StepState.ERROR, FailureKind.INFRA, f"cannot start step: {what}")


def verdict(
    p: Progress,
    state: ContainerState | None,
    step: PlanStep,
    grace: float,
    *,
    image: str,
    engine: str,
    cancel_reason: str,
) -> Verdict:
    rc = p.rc
    if p.stop is not None:
        return _stopped(p, step, grace, cancel_reason)
    if rc == 0:
        return Verdict(StepState.SUCCESS, exit_code=0)
    if rc is None or rc < 0:
        return cannot_start(f"{engine} run ended abnormally ({rc})")
    if p.out_bytes <= TAIL and _INIT_FAILED.search(p.tail):
        shell = step.shell[0] if step.shell else "?"
        return cannot_start(f"shell {shell!r} not found in image {image!r}")
    if rc in ENGINE_CODES and (state is None or not state.started):
        said = _engine_said(p.tail) or f"exit {rc}"
        return cannot_start(f"{engine} could not run the container: {said}")
    exited = f"exit code {rc}"
    res = step.resources
    memory = res.memory_bytes
    if rc == SIGKILL_CODE and (memory is not None or (state and state.oom_killed)):
        if state is not None and state.oom_killed:
            limit = describe_limit("memory_bytes", memory) if memory else "memory"
            why = f"killed: {limit} exceeded ({exited})"
        else:
            limit = describe_limit("memory_bytes", memory)
            why = f"killed by SIGKILL: {limit} likely exceeded ({exited})"
        return Verdict(StepState.FAILURE, FailureKind.SIGNAL, why, rc)
    for sig, field in ((signal.SIGXCPU, "cpu_seconds"), (signal.SIGXFSZ, "file_size_bytes")):
        value = getattr(res, field)
        if rc == 128 + sig and value is not None:
            why = f"{describe_limit(field, value)} exceeded ({sig.name}; {exited})"
            return Verdict(StepState.FAILURE, FailureKind.EXIT, why, rc)
    return Verdict(StepState.FAILURE, FailureKind.EXIT, exited, rc)


def _stopped(p: Progress, step: PlanStep, grace: float, cancel_reason: str) -> Verdict:
    how = "SIGTERM"
    if p.kill_sent:
        how += f", then SIGKILL after {format_duration(grace)} grace"
    # 128+N is the init's report of the signal we sent, not the step's own code.
    code = p.rc if p.rc is not None and 0 <= p.rc < 128 else None
    if p.stop is FailureKind.CANCELED:
        return Verdict(StepState.CANCELED, p.stop, f"{cancel_reason} ({how})", code)
    if p.stop is FailureKind.TIMEOUT:
        reason = f"timed out after {format_duration(step.timeout)} ({how})"
        return Verdict(StepState.FAILURE, p.stop, reason, code)
    idle = format_duration(step.idle_timeout or 0)
    reason = f"no output for {idle} (idle timeout; {how})"
    return Verdict(StepState.FAILURE, p.stop, reason, code)


def _engine_said(tail: bytes) -> str:
    """The engine's own error line ("Error: ..."), else the last line."""
    lines = tail.decode("utf-8", "replace").splitlines()
    errors = [x.strip() for x in lines if x.startswith("Error")]
    return errors[-1] if errors else last_line(tail)
