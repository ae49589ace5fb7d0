"""`ciwatch forge ...`: the forges named under `forges:` in the config.

`forge check NAME` asks the forge what its token may do: can it read each
repository that names this forge, and may it post commit statuses there.
It posts nothing. Exit status: 0 all fine, 1 something is missing, 2 usage.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import click

from ciwatch.app import App
from ciwatch.cli import config_option, json_option
from ciwatch.config import ForgeConfig
from ciwatch.errors import ConfigError
from ciwatch.forgewiring import forge_client


def _file_warning(forge: ForgeConfig, base: Path) -> list[str]:
    if not forge.token_file:
        return []
    try:
        mode = (base / forge.token_file).stat().st_mode
    except OSError:
        return []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"note: {forge.token_file} is readable by others; chmod 600 it"]
    return []


@click.group()
def forge() -> None:
    """The forges under `forges:` in the config (GitHub, Gitea, Forgejo, GitLab)."""


@forge.command()
@click.argument("name")
@click.option(
    "--repo",
    "forge_repos",
    multiple=True,
    metavar="OWNER/NAME",
    help="Check this forge repository (repeatable; default: every repo naming this forge).",
)
@json_option
@config_option
def check(name, forge_repos, as_json, config_path):
    """Ask forge NAME what its token may do: whether it is accepted, can read
    each repository that names this forge, and may post commit statuses there
    (GitHub and Gitea: push access; GitLab: the Developer role and the api
    scope). Nothing is posted. Exit status: 0 all fine, 1 something missing.

    \b
    Examples:
      ciwatch forge check home
      ciwatch forge check home --repo team/app
    """
    app = App.load(config_path)
    forges = app.config.forges
    if name not in forges:
        known = ", ".join(sorted(forges)) or "none configured"
        raise click.BadParameter(f"no forge {name!r} in the config (forges: {known})")
    cfg = forges[name]
    named = [r for r in app.config.repos if r.forge == name]
    repos = list(forge_repos) or [r.forge_repo for r in named if r.forge_repo]
    try:
        client = forge_client(cfg, app.base, app.environ)
    except ConfigError as exc:
        problems = [f"forges.{name}.{p}" for p in exc.problems]
        raise ConfigError(problems, exc.source) from None
    results: dict[str, list[str]] = {}
    try:
        for repo in repos:
            results[repo] = client.check(repo)
    finally:
        client.close()
    notes = _file_warning(cfg, app.base)
    if not forge_repos:
        notes += [f"note: repo {r.name!r} has no forge_repo" for r in named if not r.forge_repo]
    if not repos:
        notes.append(f"note: no repository names forge {name!r}; give one with --repo OWNER/NAME")
    failed = any(
        line.startswith(("missing:", "error:")) for lines in results.values() for line in lines
    )
    if as_json:
        doc = {"forge": name, "kind": cfg.kind, "api": client.api_base, "ok": not failed}
        doc.update(notes=notes, repos=results)
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"forge {name} ({cfg.kind}), API at {client.api_base}")
        for line in notes:
            click.echo(f"  {line}")
        for repo, lines in results.items():
            click.echo(f"{repo}:")
            for line in lines:
                click.echo(f"  {line}")
    if failed:
        sys.exit(1)


_HOOK_SETTINGS = {
    "github": [
        "Settings → Webhooks → Add webhook",
        "Content type: application/json",
        "Secret: the contents of webhook_secret_file",
        "Events: Pushes, Pull requests",
    ],
    "gitea": [
        "Settings → Webhooks → Add webhook → Gitea",
        "HTTP method POST, content type application/json",
        "Secret: the contents of webhook_secret_file",
        "Trigger on: Push events, Pull request events (or 'All events')",
        "Gitea must be allowed to call this host: [webhook] ALLOWED_HOST_LIST in app.ini",
    ],
    "gitlab": [
        "Settings → Webhooks → Add new webhook",
        "Secret token: the contents of webhook_secret_file",
        "Trigger: Push events, Tag push events, Merge request events",
        "A local address needs 'Allow requests to the local network' (admin settings)",
    ],
}
_HOOK_SETTINGS["forgejo"] = [line.replace("Gitea", "Forgejo") for line in _HOOK_SETTINGS["gitea"]]


@forge.command("hook-url")
@click.argument("name")
@config_option
def hook_url(name, config_path):
    """Print the webhook URL and settings to paste into forge NAME."""
    app = App.load(config_path)
    cfg = app.config.forges.get(name)
    if cfg is None:
        known = ", ".join(sorted(app.config.forges)) or "none"
        raise click.UsageError(f"no forge {name!r} in the config (forges: {known})")
    base = (app.config.public_url or f"http://{app.config.listen}").rstrip("/")
    click.echo(f"{base}/hooks/{name}")
    for line in _HOOK_SETTINGS[cfg.kind]:
        click.echo(f"  {line}")
    repos = [r.forge_repo for r in app.config.repos if r.forge == name and r.forge_repo]
    click.echo(f"  Repositories: {', '.join(repos) or 'none names this forge yet'}")
    if not (cfg.webhook_secret_file or cfg.webhook_secret_credential):
        click.echo("  warning: no webhook secret is configured: deliveries are not authenticated")
    if base.startswith("http://127.") or base.startswith("http://localhost"):
        click.echo("  note: public_url is not set: the forge must reach this address")


COMMANDS = [forge]
