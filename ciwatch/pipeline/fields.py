"""Field types of the pipeline format: their checks, normalisation and JSON Schema.

Each check raises ValueError with a message for the user; validation.py puts it
at the value's line and column.
"""

from __future__ import annotations

import re
import shlex
import string
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from ciwatch.pipeline import globs
from ciwatch.pipeline.durations import PATTERN as DURATION_PATTERN
from ciwatch.pipeline.durations import parse_duration
from ciwatch.pipeline.yamlcore import describe, quote

MAX_STEPS = 200
MAX_CELLS = 64
MAX_NAME = 100
RESERVED_ENV = frozenset({"CI", "HOME", "TMPDIR"})
RESERVED_PREFIX = "CIWATCH_"
DEFAULT_SHELL = "sh -e"
TEMPLATE_FIELDS = ("repo", "branch", "ref", "event")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A container image reference: [host[:port]/]path[:tag][@digest] (the OCI
# distribution grammar, kept to what registries accept). Never starts with "-",
# so it can never be read as an option of the container engine.
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_HOST = rf"(?:{_IMAGE_LABEL}(?:\.{_IMAGE_LABEL})*(?::[0-9]+)?/)"
IMAGE_PATTERN = (
    rf"^{_IMAGE_HOST}?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_IMAGE = re.compile(IMAGE_PATTERN)
MAX_IMAGE = 255


def _env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{quote(name)} is not a valid variable name "
            "(letters, digits and _, not starting with a digit)"
        )
    if name in RESERVED_ENV or name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{quote(name)} is reserved: ciwatch sets it for every step")
    return name


def _scalar_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ValueError(f"expected a string, number or boolean, got {describe(value)}")


def one_or_many(value: Any) -> Any:
    """A single string stands for a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a string or a list of strings, got {describe(value)}")
    return value


def _glob(pattern: str) -> str:
    globs.check(pattern)
    return pattern


def relative_glob(pattern: str) -> str:
    body = pattern[1:] if pattern.startswith("!") else pattern
    if body.startswith("/"):
        raise ValueError(f"{quote(pattern)} is absolute; paths are relative to the workspace")
    if ".." in body.split("/"):
        raise ValueError(f"{quote(pattern)} has a '..' component; paths stay in the workspace")
    return _glob(pattern)


def _step_name(name: str) -> str:
    if not name.strip():
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"is {len(name)} characters long; at most {MAX_NAME} allowed")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise ValueError(
                f"contains the control character U+{ord(char):04X}; "
                "step names must be printable text on one line"
            )
    if name != name.strip():
        raise ValueError(f"{quote(name)} starts or ends with white space")
    return name


def _script(value: Any) -> Any:
    if isinstance(value, list):
        for i, line in enumerate(value):
            if not isinstance(line, str):
                raise ValueError(f"run[{i}] is {describe(line)}; every command must be a string")
        value = "\n".join(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string or a list of strings, got {describe(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _shell(command: str) -> str:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"{quote(command)} cannot be split into words: {exc}") from None
    if not argv:
        raise ValueError('must name a program, e.g. "sh -e" or "bash -eo pipefail"')
    return command


def _image(ref: str) -> str:
    if len(ref) > MAX_IMAGE:
        raise ValueError(f"is {len(ref)} characters long; at most {MAX_IMAGE} allowed")
    if not _IMAGE.fullmatch(ref):
        raise ValueError(
            f'{quote(ref)} is not an image reference; expected e.g. "alpine:3.20" or '
            '"docker.io/library/python:3.12-slim" (repository names are lower case)'
        )
    return ref


def template(group: str) -> str:
    try:
        parts = list(string.Formatter().parse(group))
    except ValueError as exc:
        raise ValueError(f"{quote(group)} is not a valid template: {exc}") from None
    for _, field_name, spec, conversion in parts:
        if field_name is not None and (field_name not in TEMPLATE_FIELDS or spec or conversion):
            names = ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {quote('{' + field_name + '}')}; use {names}")
    return group


def retry_shorthand(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"max": value, "on": ["infra", "failure"]}
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a number of retries or a mapping {{max, on}}, got {describe(value)}"
        )
    return value


def unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{quote(v)} appears more than once")
        seen.add(v)
    return values


def no_pipeline_status(value: Any) -> Any:
    raise ValueError(
        "only a step's `when` can have a status (the pipeline's `when` is "
        "decided before any step runs)"
    )


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
    "description": 'seconds, or "90s", "10m", "1h30m", "500ms"',
}
TEXT_OR_LIST = str | list[str]

EnvName = Annotated[
    str,
    AfterValidator(_env_name),
    WithJsonSchema({"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}),
]
EnvValue = Annotated[str, BeforeValidator(_scalar_text, json_schema_input_type=str | float | bool)]
EnvMap = dict[EnvName, EnvValue]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
Glob = Annotated[str, AfterValidator(_glob)]
GlobList = Annotated[
    list[Glob],
    Field(min_length=1),
    BeforeValidator(one_or_many, json_schema_input_type=TEXT_OR_LIST),
]
EventName = Literal["push", "tag", "pull_request", "cron", "manual"]
StatusName = Literal["success", "failure"]
StepName = Annotated[str, AfterValidator(_step_name)]
Script = Annotated[str, BeforeValidator(_script, json_schema_input_type=TEXT_OR_LIST)]
Shell = Annotated[str, AfterValidator(_shell)]
MatrixValues = Annotated[
    list[Annotated[str, BeforeValidator(_scalar_text, json_schema_input_type=str | float | bool)]],
    Field(min_length=1),
    AfterValidator(unique),
]
RelativeGlob = Annotated[str, Field(min_length=1), AfterValidator(relative_glob)]
PathList = Annotated[
    list[RelativeGlob],
    Field(min_length=1),
    BeforeValidator(one_or_many, json_schema_input_type=TEXT_OR_LIST),
]
EventList = Annotated[
    list[EventName],
    Field(min_length=1),
    AfterValidator(unique),
    BeforeValidator(one_or_many, json_schema_input_type=EventName | list[EventName]),
]
StatusList = Annotated[
    list[StatusName],
    Field(min_length=1),
    AfterValidator(unique),
    BeforeValidator(one_or_many, json_schema_input_type=StatusName | list[StatusName]),
]
RetryOnList = Annotated[
    list[Literal["infra", "failure"]], Field(min_length=1), AfterValidator(unique)
]
UniqueNames = Annotated[
    list[str],
    AfterValidator(unique),
    BeforeValidator(one_or_many, json_schema_input_type=TEXT_OR_LIST),
]
SecretNames = Annotated[
    list[EnvName],
    AfterValidator(unique),
    BeforeValidator(one_or_many, json_schema_input_type=TEXT_OR_LIST),
]
Artifacts = Annotated[
    list[RelativeGlob], BeforeValidator(one_or_many, json_schema_input_type=TEXT_OR_LIST)
]
GroupTemplate = Annotated[str, Field(min_length=1), AfterValidator(template)]
Image = Annotated[
    str,
    Field(min_length=1),
    AfterValidator(_image),
    WithJsonSchema({"type": "string", "pattern": IMAGE_PATTERN, "maxLength": MAX_IMAGE}),
]
