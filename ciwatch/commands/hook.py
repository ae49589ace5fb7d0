"""`ciwatch install-hook` and `ciwatch hook`: feeding pushes to the daemon.

`install-hook` writes a POSIX sh post-receive hook (no Python start on the push
path); `hook` does the same job in Python for servers that prefer it. Both
spool the push for the daemon and never fail it.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

import click

from ciwatch.app import App
from ciwatch.cli import config_option
from ciwatch.hookinstall import (
    HookError,
    check_text,
    default_spool,
    default_url_file,
    install_hook,
    read_daemon_url,
    uninstall_hook,
)
from ciwatch.model import ref_display
from ciwatch.sources import refdiff
from ciwatch.sources.hookspool import spool_push


def _paths(
    config_path: str | None, spool: str | None, url_file: str | None
) -> tuple[App | None, Path, Path]:
    """The spool directory and URL file: given, else under the config's state dir."""
    app = None
    if spool is None or url_file is None:
        app = App.load(config_path)
    spool_dir = Path(spool) if spool else default_spool(app.state_dir)
    url = Path(url_file) if url_file else default_url_file(app.state_dir)
    return app, spool_dir, url


@click.command("install-hook")
@click.argument("repo_path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="The repository's name in the ciwatch config.")
@click.option("--spool", type=click.Path(file_okay=False), help="Spool dir (default STATE/spool).")
@click.option(
    "--url-file",
    type=click.Path(dir_okay=False),
    help="Where the daemon writes its pid and URL (default STATE/daemon.url).",
)
@click.option(
    "--no-fsync",
    is_flag=True,
    help="Skip the hook's fsync of each spool file (about 3 ms a push; a power cut may"
    " then lose the newest spool files, which the repository watch makes good).",
)
@click.option("--uninstall", is_flag=True, help="Remove the hook, restoring a chained one.")
@config_option
def install_hook_command(repo_path, name, spool, url_file, no_fsync, uninstall, config_path):
    """Install ciwatch's post-receive hook into the repository at REPO_PATH.

    The hook (POSIX sh, no Python) writes each push into the daemon's spool
    directory and exits at once: it never fails or holds up the push, and works
    while the daemon is down. An existing post-receive hook is kept as
    post-receive.chained and still runs with the same input.

    \b
    Example:
      ciwatch install-hook /srv/git/app.git --name app -c /etc/ciwatch/config.yaml
    """
    if uninstall:
        restored = uninstall_hook(repo_path)
        click.echo(
            f"ciwatch: hook removed from {repo_path}"
            + (f"; the previous hook is back at {restored}" if restored else "")
        )
        return
    if not name:
        raise click.UsageError("--name is required (the repository's name in the config)")
    try:
        check_text("repository name", name)
    except HookError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    app, spool_dir, url = _paths(config_path, spool, url_file)
    done = install_hook(repo_path, name, spool_dir, url, fsync=False if no_fsync else None)
    click.echo(f"ciwatch: installed {done.hook} (spool {done.spool})")
    if done.chained:
        click.echo(f"ciwatch: the previous hook runs from {done.chained}")
    if app is not None and config_path and name not in {r.name for r in app.config.repos}:
        click.echo(
            f"ciwatch: warning: {name!r} is not a repo in {config_path}; "
            "its pushes are set aside until it is",
            err=True,
        )


@click.command("hook")
@click.option("--name", required=True, help="The repository's name in the ciwatch config.")
@click.option("--spool", type=click.Path(file_okay=False), help="Spool dir (default STATE/spool).")
@click.option("--url-file", type=click.Path(dir_okay=False), help="Default STATE/daemon.url.")
@config_option
def hook_command(name, spool, url_file, config_path):
    """Queue a push for the daemon: reads post-receive's `old new ref` lines.

    For servers where a Python hook is preferred to the installed sh one. It
    never fails the push: any problem is one line on stderr and exit status 0.

    \b
    Example (hooks/post-receive):
      exec ciwatch hook --name app -c /etc/ciwatch/config.yaml
    """
    try:
        _queue_push(name, spool, url_file, config_path)
    except Exception as exc:  # the push must never fail because of ciwatch
        click.echo(f"ciwatch: warning: could not queue this push: {_one_line(exc)}", err=True)


def _queue_push(name: str, spool: str | None, url_file: str | None, config_path) -> None:
    lines = sys.stdin.buffer.read()
    if not lines.strip():
        return
    if spool is None and not config_path:
        # git runs hooks inside the repository: ./.ciwatch there is never the daemon's
        raise HookError("give --spool DIR or -c CONFIG (or set CIWATCH_CONFIG)")
    _, spool_dir, url = _paths(config_path, spool, url_file)
    try:
        spool_push(spool_dir, name, lines, now_ns=time.time_ns, token=_token)
    except FileNotFoundError:
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool_push(spool_dir, name, lines, now_ns=time.time_ns, token=_token)
    changes, _ = refdiff.parse_hook_lines(lines)
    events = refdiff.events_for(name, changes, source="hook")
    for event in events:
        click.echo(f"ciwatch: queued {ref_display(event.ref)} {event.sha[:7]}")
    if events:
        live = read_daemon_url(url)
        click.echo(
            f"ciwatch: {live}"
            if live
            else "ciwatch: the daemon is not running; it builds this push when it starts"
        )


def _token() -> str:
    return secrets.token_hex(4)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


COMMANDS = [install_hook_command, hook_command]
