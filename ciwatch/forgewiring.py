"""From the `forges:` config to clients, reporters and webhook settings.

Composition: tokens and webhook secrets are read here (files, or systemd
credentials under $CREDENTIALS_DIRECTORY), and nowhere below.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ciwatch.config import Config, ForgeConfig
from ciwatch.errors import ConfigError
from ciwatch.forges.client import ForgeClient
from ciwatch.forges.status import api_base
from ciwatch.forges.types import ForgeKind
from ciwatch.reporting import RepoForge
from ciwatch.web.hooks import HookForge


def read_credential(
    file: str | None,
    credential: str | None,
    *,
    base: Path,
    environ: Mapping[str, str],
    key: str,
) -> str | None:
    """A token or secret from `file` (relative to the config's directory) or
    from the systemd credential `credential` ($CREDENTIALS_DIRECTORY/<name>);
    None when neither is set. `key` names the setting in error messages."""
    if file:
        path, where = base / file, f"{key}_file"
    elif credential:
        creds = environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(
                [f"{key}_credential: $CREDENTIALS_DIRECTORY is not set (LoadCredential=)"]
            )
        if "/" in credential or credential in (".", ".."):
            raise ConfigError([f"{key}_credential: a credential name, not a path"])
        path, where = Path(creds) / credential, f"{key}_credential"
    else:
        return None
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError([f"{where}: cannot read {path}: {reason}"]) from None
    if not value:
        raise ConfigError([f"{where}: {path} is empty"])
    return value


def forge_token(forge: ForgeConfig, base: Path, environ: Mapping[str, str]) -> str | None:
    return read_credential(
        forge.token_file, forge.token_credential, base=base, environ=environ, key="token"
    )


def webhook_secret(forge: ForgeConfig, base: Path, environ: Mapping[str, str]) -> str | None:
    return read_credential(
        forge.webhook_secret_file,
        forge.webhook_secret_credential,
        base=base,
        environ=environ,
        key="webhook_secret",
    )


def forge_client(
    forge: ForgeConfig, base: Path, environ: Mapping[str, str], **kwargs
) -> ForgeClient:
    """The status client for one configured forge, its token read."""
    token = forge_token(forge, base, environ)
    return ForgeClient(forge.kind, api_base(forge.kind, forge.url, forge.api_url), token, **kwargs)


def forge_clients(config: Config, base: Path, environ: Mapping[str, str]) -> dict[str, ForgeClient]:
    return {name: forge_client(f, base, environ) for name, f in config.forges.items()}


def repo_forges(config: Config) -> dict[str, RepoForge]:
    """Repositories whose runs get statuses, and where."""
    out = {}
    for r in config.repos:
        if r.forge and r.forge_repo:
            out[r.name] = RepoForge(
                r.forge, r.forge_repo, config.forges[r.forge].context, r.pipeline
            )
    return out


def hook_forges(config: Config, base: Path, environ: Mapping[str, str]) -> dict[str, HookForge]:
    out = {}
    for name, f in config.forges.items():
        secret = webhook_secret(f, base, environ)
        repos = {r.forge_repo: r.name for r in config.repos if r.forge == name and r.forge_repo}
        out[name] = HookForge(
            ForgeKind(f.kind), secret.encode() if secret else None, f.trusted_users, repos
        )
    return out


def horizons(config: Config) -> dict[str, float]:
    return {name: f.status_horizon for name, f in config.forges.items()}
