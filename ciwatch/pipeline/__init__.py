"""The pipeline file: parse (YAML -> Spec), lint, compile (Spec + event -> plans), schema.

Pure logic: callers pass the file's bytes in; nothing here reads files, runs
processes or opens sockets. `plan.py` holds the compiled types the runner and
executors see.
"""

from __future__ import annotations

# Importing the submodules first makes the functions below win the package
# attributes `lint` and `compile` (import them from here, not as modules).
from ciwatch.pipeline.compile import compile
from ciwatch.pipeline.dump import compiled_to_dict
from ciwatch.pipeline.lint import lint, parse
from ciwatch.pipeline.plan import CompiledPipeline, Diagnostic, EventContext, Limits, Severity
from ciwatch.pipeline.schema import json_schema
from ciwatch.pipeline.spec import Spec

__all__ = [
    "CompiledPipeline",
    "Diagnostic",
    "EventContext",
    "Limits",
    "Severity",
    "Spec",
    "compile",
    "compiled_to_dict",
    "json_schema",
    "lint",
    "parse",
]
