"""Container image names: which ones ciwatch passes to a container engine (pure).

An image name comes from a pipeline file, that is from whoever can push, and
ends up as one argument of ``podman run``/``docker run``. A name that starts with
``-`` would be read as an option, so only plain references are accepted:
``[registry[:port]/]path[:tag][@digest]`` spelled with letters, digits and
``. _ - / : @``.
"""

from __future__ import annotations

import re

_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
MAX_LENGTH = 255


def image_problem(name: object) -> str | None:
    """What is wrong with `name` as an image reference, or None if it can be used."""
    if not isinstance(name, str) or not name:
        return "an image name must be a non-empty string"
    if len(name) > MAX_LENGTH:
        return f"image name longer than {MAX_LENGTH} characters"
    if not _IMAGE.fullmatch(name):
        return (
            f"{name!r} is not an image name: use letters, digits and . _ - / : @, "
            "starting with a letter or digit (e.g. debian:12, registry.example.org/ci/build:1)"
        )
    return None
