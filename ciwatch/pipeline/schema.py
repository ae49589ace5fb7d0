"""The JSON Schema of the pipeline file format, for editors and `ciwatch schema`."""

from __future__ import annotations

from typing import Any

from ciwatch.pipeline.spec import Spec

__all__ = ["json_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """A fresh JSON Schema (draft 2020-12) dict for `.ciwatch.yml`."""
    schema = Spec.model_json_schema(mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "ciwatch pipeline",
        "description": "A ciwatch pipeline file (.ciwatch.yml).",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
