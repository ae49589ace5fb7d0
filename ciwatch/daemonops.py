"""What the running daemon can be asked, over its control socket and its web
API: status, trigger, cancel, retry...; and the manual and cron triggers that
resolve a branch to a commit."""

from __future__ import annotations

import os
from dataclasses import replace

from ciwatch import __version__
from ciwatch.errors import CiwatchError, GitError, NotFoundError
from ciwatch.model import CancelMode, Event, EventKind, Repo, Run, RunState, ref_display


class Operations:
    def __init__(self, daemon) -> None:
        self.d = daemon

    def handlers(self) -> dict:
        return {
            "status": self.status,
            "drain": lambda req: self._switch("drain"),
            "pause": lambda req: self._switch("pause"),
            "resume": lambda req: self._switch("resume"),
            "reload": self.reload,
            "trigger": self.trigger,
            "cancel": self.cancel,
            "retry": self.retry,
        }

    def _switch(self, what: str) -> dict:
        getattr(self.d.scheduler, what)()
        self.d.notifier.status(self.status_line())
        return {"ok": True, "scheduler": what}

    def resolve_head(self, repo: Repo, branch: str) -> str | None:
        """The commit a branch points to now (fetching the mirror first)."""
        mirror = self.d.mirrors.mirror(repo.id, repo.url)
        mirror.fetch()
        ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
        return mirror.resolve(ref)

    def trigger_run(self, name: str, ref: str | None = None) -> Run:
        """A new run of the current commit of `ref` (a branch name or a full ref;
        default: the repository's default branch)."""
        repo = self.d.wiring.repos.get(name)
        if repo is None:
            raise NotFoundError(f"no repository {name!r} in the configuration")
        ref = ref or f"refs/heads/{repo.default_branch}"
        if not ref.startswith("refs/"):
            ref = f"refs/heads/{ref}"
        try:
            sha = self.resolve_head(repo, ref)
        except GitError:
            raise NotFoundError(
                f"{name}: no {ref_display(ref)} to build (no such ref, or no commits)"
            ) from None
        event = Event(repo=name, kind=EventKind.MANUAL, ref=ref, sha=sha, source="manual")
        run, _ = self.d.intake.submit(event, force_new_run=True)
        return run

    def cancel_run(self, run_id: int) -> Run:
        run = self.d.store.get_run(run_id)
        if not self.d.store.request_cancel(run.id, "canceled by a user", CancelMode.CANCEL):
            raise CiwatchError(f"{run.label} has already finished ({run.state.value})")
        self.d.scheduler.wake()
        return run

    def retry_run(self, run_id: int) -> Run:
        """A new run of the same event: same commit, ref and trust."""
        old = self.d.store.get_run(run_id)
        if not old.state.finished:
            raise CiwatchError(f"{old.label} is still {old.state.value}; cancel it first")
        if old.repo not in self.d.wiring.repos:
            raise NotFoundError(f"no repository {old.repo!r} in the configuration")
        event = replace(self.d.store.get_event(old.event_id), source="manual")
        run, _ = self.d.intake.submit(event, force_new_run=True)
        if run is None:
            raise CiwatchError(f"{old.label}: its event could not be queued again")
        return run

    def trigger(self, req: dict) -> dict:
        ref = req.get("ref")
        run = self.trigger_run(str(req.get("repo", "")), str(ref) if ref else None)
        return {"ok": True, "run": run.id, "label": run.label, "sha": run.sha, "ref": run.ref}

    def cancel(self, req: dict) -> dict:
        run = self.cancel_run(self._run(req.get("run")).id)
        return {"ok": True, "run": run.id, "label": run.label}

    def retry(self, req: dict) -> dict:
        run = self.retry_run(self._run(req.get("run")).id)
        return {"ok": True, "run": run.id, "label": run.label, "sha": run.sha, "ref": run.ref}

    def _run(self, spec) -> Run:
        text = str(spec or "")
        if "#" in text:
            repo, _, num = text.rpartition("#")
            if num.isdigit():
                return self.d.store.find_run(repo, int(num))
        if text.isdigit():
            return self.d.store.get_run(int(text))
        raise CiwatchError(f"{text!r}: give a run id or REPO#NUMBER")

    def reload(self, req: dict) -> dict:
        error = self.d.reload()
        return {"ok": True} if error is None else {"ok": False, "error": error}

    @staticmethod
    def _run_info(r) -> dict:
        return {
            "id": r.id,
            "label": r.label,
            "ref": ref_display(r.ref),
            "sha": r.sha,
            "attempt": r.attempts,
            "created_at": r.created_at,
            "started_at": r.started_at,
            "waiting": r.wait_reason,
        }

    def status(self, req: dict | None = None) -> dict:
        store = self.d.store
        running = store.list_runs(state=RunState.RUNNING, limit=200)
        queued = store.list_runs(state=RunState.QUEUED, limit=200)
        queued.sort(key=lambda r: (-r.priority, r.created_at, r.id))
        return {
            "ok": True,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.d.started_at,
            "state_dir": str(self.d.state_dir),
            "scheduler": self.d.scheduler.status(),
            "running": [self._run_info(r) for r in reversed(running)],
            "queued": [self._run_info(r) for r in queued],
            "sources": self.sources(),
            "errors": self.d.recent_errors.items(),
            "outbox": self.d.outbox.status(),
            "web": self.d.web.url,
        }

    def sources(self) -> list[dict]:
        """Each source and its health (polls: last success, error, failures)."""
        sources: list[dict] = [{"kind": "hook", "repo": None, "spool": str(self.d.spool_dir)}]
        sources += [{"kind": "watch", "repo": name} for name in sorted(self.d.watched)]
        sources += [{"kind": "poll", **p} for p in self.d.poller.status()]
        sources += [{"kind": "cron", "repo": s[0].name, "cron": s[1]} for s in self.d.schedules]
        return sources

    def status_line(self) -> str:
        s = self.d.scheduler.status()
        return (
            f"running {s.get('running', 0)}, queued {s.get('queued', 0)}"
            + (", paused" if s.get("paused") else "")
            + (", draining" if s.get("draining") else "")
        )
