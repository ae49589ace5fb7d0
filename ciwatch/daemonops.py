"""What the running daemon can be asked over its control socket, and the
manual and cron triggers that resolve a branch to a commit."""

from __future__ import annotations

import os

from ciwatch import __version__
from ciwatch.errors import CiwatchError, GitError, NotFoundError
from ciwatch.model import CancelMode, Event, EventKind, Repo, RunState, ref_display


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

    def trigger(self, req: dict) -> dict:
        name = str(req.get("repo", ""))
        repo = self.d.wiring.repos.get(name)
        if repo is None:
            raise NotFoundError(f"no repository {name!r} in the configuration")
        ref = str(req.get("ref") or f"refs/heads/{repo.default_branch}")
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
        return {"ok": True, "run": run.id, "label": run.label, "sha": sha, "ref": ref}

    def cancel(self, req: dict) -> dict:
        run = self._run(req.get("run"))
        ok = self.d.store.request_cancel(run.id, "canceled by a user", CancelMode.CANCEL)
        self.d.scheduler.wake()
        return {"ok": ok, "run": run.id, "label": run.label}

    def _run(self, spec) -> object:
        text = str(spec or "")
        if "#" in text:
            repo, _, num = text.rpartition("#")
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
        sources = [{"kind": "hook", "repo": None, "spool": str(self.d.spool_dir)}]
        sources += [{"kind": "watch", "repo": name} for name in sorted(self.d.watched)]
        sources += [{"kind": "poll", **p} for p in self.d.poller.status()]
        sources += [{"kind": "cron", "repo": s[0].name, "cron": s[1]} for s in self.d.schedules]
        return {
            "ok": True,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.d.started_at,
            "state_dir": str(self.d.state_dir),
            "scheduler": self.d.scheduler.status(),
            "running": [self._run_info(r) for r in reversed(running)],
            "queued": [self._run_info(r) for r in queued],
            "sources": sources,
            "errors": self.d.recent_errors.items(),
            "outbox": self.d.outbox.status(),
            "web": self.d.web.url,
        }

    def status_line(self) -> str:
        s = self.d.scheduler.status()
        return (
            f"running {s.get('running', 0)}, queued {s.get('queued', 0)}"
            + (", paused" if s.get("paused") else "")
            + (", draining" if s.get("draining") else "")
        )
