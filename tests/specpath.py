"""Where the forge specs and payloads are: `shared/specs` beside the checkout."""

from __future__ import annotations

from pathlib import Path


def find_specs() -> Path:
    root = Path(__file__).resolve().parent.parent
    for candidate in (root.parent / "shared" / "specs", Path("/work/shared/specs")):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"forge specs not found beside {root} (expected ../shared/specs)")


SPECS = find_specs()
