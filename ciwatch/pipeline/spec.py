"""The pipeline file format (`.ciwatch.yml`) as pydantic models: the parsed spec.

Frozen, unknown keys refused, strict types (no "yes" for true, no 5 for "5").
Values are normalised while validating (see fields.py): durations become
seconds, env values strings, `run` lists one script, `retry: 2` a full retry
mapping. Cross-step checks (names, depends_on, cycles) live in lint.py; turning
a spec into plans for one event lives in compile.py.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from ciwatch.pipeline.fields import (
    MAX_CELLS,
    MAX_STEPS,
    Artifacts,
    Duration,
    EnvMap,
    EnvName,
    EventList,
    GlobList,
    GroupTemplate,
    Image,
    MatrixValues,
    PathList,
    RetryOnList,
    Script,
    SecretNames,
    Shell,
    StatusList,
    StepName,
    UniqueNames,
    no_pipeline_status,
    retry_shorthand,
)
from ciwatch.pipeline.plan import Diagnostic, Limits, Severity
from ciwatch.pipeline.resources import ResourcesSpec
from ciwatch.pipeline.yamlcore import Path, format_path


class _Model(BaseModel):
    # Built on first use, not at import: a one-shot `ciwatch run` builds them
    # while the checkout runs.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)


class PipelineWhen(_Model):
    """When the pipeline runs at all. Absent keys do not restrict."""

    branch: GlobList | None = None
    tag: GlobList | None = None
    event: EventList | None = None
    path: PathList | None = None
    # Refused with a clear message (a pipeline's `when` is decided before steps run).
    status: SkipJsonSchema[Annotated[None, BeforeValidator(no_pipeline_status)]] = Field(
        None, exclude=True
    )


class StepWhen(PipelineWhen):
    """When a step runs; `status` compares with how the run is going so far."""

    status: StatusList | None = None


class RetrySpec(_Model):
    max: Annotated[int, Field(ge=0)]
    on: RetryOnList = ["infra", "failure"]

    @field_validator("max")
    @classmethod
    def _within_limit(cls, value: int, info: ValidationInfo) -> int:
        limits = (info.context or {}).get("limits") or Limits()
        if value > limits.max_retries:
            raise ValueError(
                f"must be at most {limits.max_retries} (the configured limit), got {value}"
            )
        return value


Retry = Annotated[
    RetrySpec, BeforeValidator(retry_shorthand, json_schema_input_type=int | RetrySpec)
]


class ConcurrencySpec(_Model):
    group: GroupTemplate = "{repo}/{ref}"
    on_new_commit: Literal["cancel-running", "cancel-pending", "queue", "never"] = "queue"


class Step(_Model):
    name: StepName | None = None
    run: Script
    env: EnvMap = Field(default_factory=dict)
    timeout: Duration | None = None
    idle_timeout: Duration | None = None
    depends_on: UniqueNames | None = None
    retry: Retry | None = None
    allow_failure: bool = False
    when: StepWhen | None = None
    secrets: SecretNames = Field(default_factory=list)
    interruptible: bool = True
    artifacts: Artifacts = Field(default_factory=list)
    shell: Shell | None = None
    resources: ResourcesSpec | None = None  # per key over the pipeline's
    image: Image | None = None  # over the pipeline's; the container executor's


class Spec(_Model):
    """A whole pipeline file. `parse` attaches the source for positions."""

    when: PipelineWhen | None = None
    env: EnvMap = Field(default_factory=dict)
    timeout: Duration | None = None
    idle_timeout: Duration | None = None
    shell: Shell | None = None
    resources: ResourcesSpec | None = None
    image: Image | None = None
    concurrency: ConcurrencySpec | None = None
    matrix: Annotated[dict[EnvName, MatrixValues], Field(min_length=1)] | None = None
    steps: Annotated[list[Step], Field(min_length=1, max_length=MAX_STEPS)]

    _source: Any = PrivateAttr(default=None)  # the YamlDoc it was read from
    _warnings: tuple[Diagnostic, ...] = PrivateAttr(default=())

    @field_validator("matrix")
    @classmethod
    def _few_cells(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        if value:
            cells = math.prod(len(v) for v in value.values())
            if cells > MAX_CELLS:
                raise ValueError(f"expands to {cells} combinations; at most {MAX_CELLS} allowed")
        return value

    def step_names(self) -> tuple[str, ...]:
        """Each step's name; unnamed steps are "step 1", "step 2", … by position."""
        return tuple(s.name or f"step {i + 1}" for i, s in enumerate(self.steps))

    def matrix_cells(self) -> list[tuple[tuple[str, str], ...]]:
        """Every combination, first key outermost; [()] without a matrix."""
        if not self.matrix:
            return [()]
        keys = list(self.matrix)
        return [
            tuple(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.matrix[k] for k in keys))
        ]

    def with_source(self, source: Any, warnings: tuple[Diagnostic, ...] = ()) -> Spec:
        self._source, self._warnings = source, tuple(warnings)
        return self

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return self._warnings

    def diagnostic(
        self, path: Path, message: str, severity: Severity = Severity.WARNING
    ) -> Diagnostic:
        """A diagnostic placed at `path` in the source file (1:1 without one)."""
        if self._source is not None:
            return self._source.diagnostic(path, message, severity=severity)
        return Diagnostic("<pipeline>", 1, 1, format_path(path), message, severity)
