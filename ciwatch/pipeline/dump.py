"""A CompiledPipeline as plain JSON-ready data (for `--json` output and golden files)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from ciwatch.pipeline.plan import CompiledPipeline, Diagnostic

__all__ = ["compiled_to_dict"]


def compiled_to_dict(compiled: CompiledPipeline) -> dict[str, Any]:
    """Dataclasses to dicts, tuples to lists, sets to sorted lists, enums to values;
    diagnostics as their one-line text."""
    return _plain(compiled)


def _plain(value: Any) -> Any:
    if isinstance(value, Diagnostic):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (frozenset, set)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
