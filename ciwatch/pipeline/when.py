"""Evaluating `when` (pipeline or step) against one event.

`branch` and `tag` filter refs: with only `branch`, tag events never match
(and the other way round); with both, either may match. For pull requests the
branch is the target branch. `path` matches when at least one changed path is
selected; unknown changes (None) match, so a build is never missed.
`status` is not decided here: it becomes PlanStep.run_on.
"""

from __future__ import annotations

from collections.abc import Sequence

from ciwatch.pipeline.globs import list_matcher
from ciwatch.pipeline.plan import EventContext
from ciwatch.pipeline.spec import PipelineWhen
from ciwatch.pipeline.yamlcore import quote

__all__ = ["why_not"]


def why_not(when: PipelineWhen | None, event: EventContext) -> str | None:
    """None when `when` selects this event, else the reason it does not."""
    if when is None:
        return None
    if when.event is not None and event.kind.value not in when.event:
        return f"when.event: {quote(event.kind.value)} is not in {quote(when.event)}"
    reason = _ref_reason(when, event)
    if reason is None and when.path is not None and event.changed_paths is not None:
        reason = _path_reason(when.path, event.changed_paths)
    return reason


def _ref_reason(when: PipelineWhen, event: EventContext) -> str | None:
    reasons = []
    for key, name, patterns in (
        ("branch", event.branch, when.branch),
        ("tag", event.tag, when.tag),
    ):
        if patterns is None:
            continue
        if name is None:
            reasons.append(f"when.{key}: {_ref_words(event)} is not a {key}")
        elif list_matcher(patterns)(name):
            return None
        else:
            reasons.append(f"when.{key}: {quote(name)} does not match {quote(patterns)}")
    return "; ".join(reasons) or None


def _ref_words(event: EventContext) -> str:
    if event.tag is not None:
        return f"tag {quote(event.tag)}"
    if event.branch is not None:
        return f"branch {quote(event.branch)}"
    return f"ref {quote(event.ref)}"


def _path_reason(patterns: Sequence[str], changed: Sequence[str]) -> str | None:
    match = list_matcher(patterns)
    if any(match(p) for p in changed):
        return None
    count = f"{len(changed)} changed path" + ("" if len(changed) == 1 else "s")
    return f"when.path: none of the {count} match {quote(patterns)}"
