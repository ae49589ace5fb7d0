"""Which image a step runs in, and making sure the engine has it.

A step's ``image:`` wins over the executor's default. The pull policy is the
operator's: ``never`` (the image must be there), ``missing`` (pull when the
engine does not have it), ``always`` (pull once per run, for tags that move).
A pull has a deadline and stops on a cancel. Images found or pulled are
remembered for the executor's life (one run), so a run's later steps do not
ask again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

from ciwatch.errors import ExecutorError
from ciwatch.executors.base import CancelToken, LogSink
from ciwatch.executors.engine import Engine
from ciwatch.executors.process import format_duration
from ciwatch.imageref import image_problem


class PullPolicy(StrEnum):
    NEVER = "never"
    MISSING = "missing"
    ALWAYS = "always"


class Images:
    def __init__(
        self,
        default: str | None,
        pull: str = "missing",
        timeout: float = 600.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self._pull = PullPolicy(pull)
        except ValueError:
            choices = ", ".join(PullPolicy)
            raise ExecutorError(f"pull must be one of {choices}, not {pull!r}") from None
        self._default = default
        self._timeout = timeout
        self._mono = monotonic
        self._lock = threading.Lock()  # one pull per image, even for parallel steps
        self._present: set[str] = set()

    def image_for(self, asked: str | None) -> str:
        """The image of a step that asked for `asked`; raises ExecutorError."""
        image = asked or self._default
        if not image:
            raise ExecutorError(
                "no container image: give the step an `image:` or set executor.image in the config"
            )
        problem = image_problem(image)
        if problem:
            raise ExecutorError(problem)
        return image

    def ensure(self, engine: Engine, image: str, sink: LogSink, cancel: CancelToken) -> None:
        """Return once the engine has `image`; raises ExecutorError naming it."""
        with self._lock:
            if image in self._present:
                return
            if self._pull is PullPolicy.ALWAYS or not engine.has_image(image):
                if self._pull is PullPolicy.NEVER:
                    raise ExecutorError(
                        f"image {image!r} is not present and executor.pull is never: "
                        f"`{engine.name} pull {image}` or load it first"
                    )
                sink.note(f"pulling image {image}")
                began = self._mono()
                problem = engine.pull(image, self._timeout, cancel)
                if problem:
                    raise ExecutorError(f"cannot pull image {image!r}: {problem}")
                sink.note(f"pulled image {image} in {format_duration(self._mono() - began)}")
            self._present.add(image)
