"""Daemon configuration: YAML -> validated, frozen settings (pure).

The only I/O is in `read_config` (one thin loader) and `read_secrets`; both
are called from the composition root (cli, daemon) and nowhere below it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ciwatch import yamlsafe
from ciwatch.errors import ConfigError, DocumentError
from ciwatch.pipeline.plan import Limits
from ciwatch.validation import validate

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_duration(value: object) -> float:
    """Seconds from 30, 2.5, "90s", "10m", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 90s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m or not any(m.groups()):
            raise ValueError(f"{value!r} is not a duration; use e.g. 90s, 10m, 1h")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("must be a positive, finite duration")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from 1048576, "10MB", "512k", "1GiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"{value!r} is not a size; use e.g. 10MB or 512k")
        n = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "")[:1].lower()])
    if n <= 0:
        raise ValueError("must be positive")
    return n


Duration = Annotated[float, Field(json_schema_extra={"examples": ["90s", "10m"]})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecutorConfig(_Model):
    kind: Literal["process", "sandbox"] = "process"
    grace: Duration = 10.0  # between SIGTERM and SIGKILL
    pass_env: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
    network: bool = True  # sandbox: False gives steps no network at all
    bwrap: str = "bwrap"  # sandbox: the bubblewrap program
    hide: tuple[str, ...] = ()  # sandbox: more paths steps must not see

    _durations = field_validator("grace", mode="before")(lambda v: parse_duration(v))


class WorkspaceConfig(_Model):
    strategy: Literal["fresh", "cached"] = "fresh"
    keep_failed: bool = True
    keep_all: bool = False


class RetentionConfig(_Model):
    runs: int = Field(1000, gt=0)
    log_days: int = Field(30, gt=0)


class LimitsConfig(_Model):
    default_timeout: Duration = 3600.0
    max_timeout: Duration = 6 * 3600.0
    max_parallel_steps: int = Field(4, ge=1, le=64)
    max_step_retries: int = Field(5, ge=0, le=20)
    log_cap: int = 16 << 20  # bytes per step log; head and tail are kept beyond it
    pipeline_max_bytes: int = 1 << 20

    _durations = field_validator("default_timeout", "max_timeout", mode="before")(
        lambda v: parse_duration(v)
    )
    _sizes = field_validator("log_cap", "pipeline_max_bytes", mode="before")(
        lambda v: parse_size(v)
    )

    def pipeline_limits(self) -> Limits:
        return Limits(
            default_timeout=min(self.default_timeout, self.max_timeout),
            max_timeout=self.max_timeout,
            max_parallel=self.max_parallel_steps,
            max_retries=self.max_step_retries,
        )


class DaemonConfig(_Model):
    shutdown_grace: Duration = 60.0  # on SIGTERM, running steps get this long to finish
    lease: Duration = 60.0  # an attempt's lease; a worker silent this long is lost
    max_attempts: int = Field(3, ge=1, le=20)  # lost workers retried up to this many attempts
    max_concurrent_polls: int = Field(4, ge=1, le=64)
    spare_workers: int = Field(1, ge=0, le=16)  # started ahead, so a push starts at once

    _durations = field_validator("shutdown_grace", "lease", mode="before")(
        lambda v: parse_duration(v)
    )


class ForgeConfig(_Model):
    kind: Literal["github", "gitea", "forgejo", "gitlab"]
    url: (
        str  # the web/API base: https://github.com (API at api.github.com), https://git.example.org
    )
    api_url: str | None = (
        None  # only when the API is elsewhere (GitHub Enterprise: https://ghe/api/v3)
    )
    token_file: str | None = None  # or a systemd credential: token_credential
    token_credential: str | None = None  # a name under $CREDENTIALS_DIRECTORY
    webhook_secret_file: str | None = None
    webhook_secret_credential: str | None = None
    context: str = "ciwatch"  # status context prefix: "ciwatch/<pipeline>[/<cell>]"
    status_horizon: Duration = 24 * 3600.0  # how long a status is retried before giving up
    # Pull requests from forks, and from senders not listed here, run without secrets.
    trusted_users: tuple[str, ...] = ()

    _durations = field_validator("status_horizon", mode="before")(lambda v: parse_duration(v))


class RepoConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    path: str | None = None  # a local bare repository: watched and fed by the hook
    url: str | None = None  # a remote: polled
    forge: str | None = None
    forge_repo: str | None = None
    poll_interval: Duration = 60.0
    branches: tuple[str, ...] = ()
    pipeline: str = ".ciwatch.yml"
    default_branch: str = "main"
    concurrency: int | None = Field(None, ge=1, le=256)  # runs of this repo at once
    pull_requests: bool = False  # also poll refs/pull/*/head (untrusted: no secrets)
    watch: bool = True  # watch a local repository's refs (the safety net for the hook)
    poll: bool | None = None  # poll it with ls-remote: always for `url`, optional for `path`

    _durations = field_validator("poll_interval", mode="before")(lambda v: parse_duration(v))

    @model_validator(mode="after")
    def _one_source(self) -> RepoConfig:
        if bool(self.path) == bool(self.url):
            raise ValueError("give exactly one of 'path' (a local repository) or 'url' (a remote)")
        return self


class ScheduleConfig(_Model):
    repo: str
    cron: str
    branch: str = "main"


class SecretConfig(_Model):
    file: str


class Config(_Model):
    state_dir: str | None = None
    listen: str = "127.0.0.1:8750"
    public_url: str | None = None
    concurrency: int = Field(2, ge=1, le=256)
    executor: ExecutorConfig = ExecutorConfig()
    workspace: WorkspaceConfig = WorkspaceConfig()
    retention: RetentionConfig = RetentionConfig()
    limits: LimitsConfig = LimitsConfig()
    daemon: DaemonConfig = DaemonConfig()
    forges: dict[str, ForgeConfig] = {}
    repos: tuple[RepoConfig, ...] = ()
    schedules: tuple[ScheduleConfig, ...] = ()
    secrets: dict[str, SecretConfig] = {}

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: dict[str, SecretConfig]) -> dict[str, SecretConfig]:
        bad = [k for k in v if not _ENV_NAME.match(k) or k.startswith("CIWATCH_")]
        if bad:
            raise ValueError(f"secret names must be environment variable names: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [r.name for r in self.repos]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"repo names must be unique: {', '.join(dupes)}")
        for r in self.repos:
            if r.forge and r.forge not in self.forges:
                raise ValueError(
                    f"repo {r.name!r} names forge {r.forge!r}, which is not in 'forges'"
                )
        for s in self.schedules:
            if s.repo not in names:
                raise ValueError(f"schedule names repo {s.repo!r}, which is not in 'repos'")
        return self

    def state_path(self, environ: Mapping[str, str], cwd: Path) -> Path:
        """state_dir, else $STATE_DIRECTORY (systemd), else ./.ciwatch."""
        if self.state_dir:
            return cwd / self.state_dir
        if environ.get("STATE_DIRECTORY"):
            return Path(environ["STATE_DIRECTORY"].split(":")[0])
        return cwd / ".ciwatch"


def parse_config(data: bytes, filename: str) -> Config:
    """Validate a config document, listing every problem as `file:line: key: message`."""
    try:
        doc = yamlsafe.load(
            data, filename, max_bytes=4 << 20, allow_empty=True, label="config file"
        )
        if doc.data is None:
            return Config()
        return validate(Config, doc, filename)
    except DocumentError as exc:
        problems = [
            f"{d.file}:{d.line}: {d.path + ': ' if d.path else ''}{d.message}"
            for d in exc.diagnostics
        ]
        raise ConfigError(problems, filename) from None


def read_config(path: Path | None) -> tuple[Config, Path]:
    """Read and validate the config file; no file means all defaults."""
    if path is None:
        return Config(), Path.cwd()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"], str(path)) from None
    return parse_config(data, str(path)), path.resolve().parent


def read_secrets(config: Config, base: Path) -> dict[str, str]:
    """Secret values from their files (trailing newline dropped)."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for name, ref in config.secrets.items():
        try:
            values[name] = (base / ref.file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(
                f"secrets.{name}.file: cannot read {ref.file}: {getattr(exc, 'strerror', exc)}"
            )
    if problems:
        raise ConfigError(problems)
    return values
