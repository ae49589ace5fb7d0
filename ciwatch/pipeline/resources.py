"""The `resources:` section (pipeline and step) and how it becomes a step's Resources.

A step's value for each key is its own, else the pipeline's, else the
operator's default (`Limits.default_resources`), else the operator's maximum
(`Limits.max_resources`). Whatever a pipeline asks beyond the maximum is
clamped to it, with a warning at the value (as timeouts are).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from ciwatch.pipeline.durations import PATTERN as DURATION_PATTERN
from ciwatch.pipeline.durations import format_duration, parse_duration
from ciwatch.pipeline.plan import Diagnostic, Limits, Resources
from ciwatch.pipeline.sizes import MAX_BYTES, format_size, parse_size
from ciwatch.pipeline.sizes import PATTERN as SIZE_PATTERN
from ciwatch.pipeline.yamlcore import Path

__all__ = ["ResourcesSpec", "KEYS", "resolve", "describe_limit", "MIN_OPEN_FILES"]

MIN_OPEN_FILES = 8  # stdin, stdout, stderr, the script, and a few for the shell itself
MIN_MEMORY = 1 << 20  # below this no shell starts: surely a missing unit
MAX_COUNT = 1 << 30

_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_BYTES},
        {"type": "string", "pattern": SIZE_PATTERN},
    ],
    "description": 'bytes, or "512K", "64M", "2G" (binary units: 1K = 1024 bytes)',
}
_CPU_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
    "description": 'CPU seconds per process, or "90s", "10m", "1h"',
}

Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
CpuTime = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_CPU_SCHEMA)]


class ResourcesSpec(BaseModel):
    """`resources:` as written; every key optional."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)

    memory: Size | None = None
    processes: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    open_files: Annotated[int, Field(ge=MIN_OPEN_FILES, le=MAX_COUNT)] | None = None
    file_size: Size | None = None
    cpu_time: CpuTime | None = None

    @field_validator("memory")
    @classmethod
    def _enough_memory(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_MEMORY:
            raise ValueError(
                f"{format_size(value)} is less than {format_size(MIN_MEMORY)}; "
                f"did you mean '{value}M'?"
            )
        return value

    def resources(self) -> Resources:
        return Resources(
            memory_bytes=self.memory,
            processes=self.processes,
            open_files=self.open_files,
            file_size_bytes=self.file_size,
            cpu_seconds=self.cpu_time,
        )


# (key in the file, field of Resources, how a value is shown)
KEYS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("memory", "memory_bytes", format_size),
    ("processes", "processes", lambda n: f"{n:g}"),
    ("open_files", "open_files", lambda n: f"{n:g}"),
    ("file_size", "file_size_bytes", format_size),
    ("cpu_time", "cpu_seconds", format_duration),
)
_SHOW = {field: show for _, field, show in KEYS}
_NAMES = {
    "memory_bytes": "memory limit",
    "processes": "process limit",
    "open_files": "open files limit",
    "file_size_bytes": "file size limit",
    "cpu_seconds": "CPU time limit",
}


def describe_limit(field: str, value: float) -> str:
    """E.g. ("memory_bytes", 67108864) -> "memory limit 64 MiB"."""
    return f"{_NAMES[field]} {_SHOW[field](value)}"


Diagnose = Callable[[Path, str], Diagnostic]


def resolve(
    pipeline: ResourcesSpec | None,
    steps: Sequence[ResourcesSpec | None],
    limits: Limits,
    diagnose: Diagnose,
) -> tuple[tuple[Resources, ...], tuple[Diagnostic, ...]]:
    """Each step's final Resources, and a warning for every value clamped."""
    warnings: list[Diagnostic] = []
    top = limits.max_resources
    default = limits.default_resources

    def clamp(asked: ResourcesSpec | None, where: Path) -> dict[str, float]:
        found: dict[str, float] = {}
        for key, field, show in KEYS:
            value = getattr(asked, key) if asked is not None else None
            if value is None:
                continue
            cap = getattr(top, field)
            if cap is not None and value > cap:
                warnings.append(
                    diagnose(
                        (*where, key),
                        f"{show(value)} is more than the limit of {show(cap)}; using {show(cap)}",
                    )
                )
                value = cap
            found[field] = value
        return found

    base = clamp(pipeline, ("resources",))
    out = []
    for i, step in enumerate(steps):
        own = clamp(step, ("steps", i, "resources"))
        values = {}
        for _, field, _ in KEYS:
            value = own.get(field, base.get(field))
            cap = getattr(top, field)
            if value is None:
                value = getattr(default, field)
                if value is None or (cap is not None and value > cap):
                    value = cap
            values[field] = value
        out.append(Resources(**values))
    return tuple(out), tuple(warnings)


def rlimit_seconds(seconds: float) -> int:
    """CPU seconds as a resource limit counts them: whole, at least one."""
    return max(1, math.ceil(seconds))
