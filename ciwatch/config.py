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
from ciwatch.imageref import image_problem
from ciwatch.pipeline.plan import Limits
from ciwatch.pipeline.resources import KEYS as RESOURCE_KEYS
from ciwatch.pipeline.resources import ResourcesSpec
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
    kind: Literal["process", "sandbox", "container"] = "process"
    grace: Duration = 10.0  # between SIGTERM and SIGKILL
    pass_env: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
    network: bool = True  # sandbox, container: False gives steps no network at all
    bwrap: str = "bwrap"  # sandbox: the bubblewrap program
    hide: tuple[str, ...] = ()  # sandbox: more paths steps must not see
    engine: Literal["podman", "docker"] | None = None  # container: None = podman, else docker
    image: str | None = None  # container: the image of steps without `image:`
    engine_args: tuple[str, ...] = ()  # container: more `run` options, e.g. --runtime runc
    pull: Literal["never", "missing", "always"] = "missing"  # container: when to pull images
    pull_timeout: Duration = 600.0  # container: the longest a pull may take

    _durations = field_validator("grace", "pull_timeout", mode="before")(
        lambda v: parse_duration(v)
    )

    @field_validator("image")
    @classmethod
    def _image_name(cls, value: str | None) -> str | None:
        problem = None if value is None else image_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class WorkspaceConfig(_Model):
    strategy: Literal["fresh", "cached"] = "fresh"
    keep_failed: bool = True
    keep_all: bool = False


class RetentionConfig(_Model):
    """What ciwatch keeps (ciwatch.retention removes the rest, hourly and at start)."""

    runs: int = Field(1000, gt=0, le=10_000_000)  # finished runs per repository
    log_days: int = Field(30, gt=0, le=36_500)  # logs and artifacts of older runs go
    workspace_days: int = Field(3, gt=0, le=36_500)  # kept workspaces of failed runs
    rejected_days: int = Field(14, gt=0, le=36_500)  # files in STATE/spool/rejected


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
    # A step's resources (same keys and units as a pipeline's `resources:`):
    # `step` holds the maxima (every step is held to them), `step_defaults`
    # what a step gets when its pipeline does not say.
    step: ResourcesSpec = ResourcesSpec()
    step_defaults: ResourcesSpec = ResourcesSpec()

    _sizes = field_validator("log_cap", "pipeline_max_bytes", mode="before")(
        lambda v: parse_size(v)
    )

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> LimitsConfig:
        for key, _, show in RESOURCE_KEYS:
            default, top = getattr(self.step_defaults, key), getattr(self.step, key)
            if default is not None and top is not None and default > top:
                raise ValueError(
                    f"step_defaults.{key} ({show(default)}) is more than "
                    f"step.{key} ({show(top)}), the maximum"
                )
        return self

    def pipeline_limits(self) -> Limits:
        return Limits(
            default_timeout=min(self.default_timeout, self.max_timeout),
            max_timeout=self.max_timeout,
            max_parallel=self.max_parallel_steps,
            max_retries=self.max_step_retries,
            max_resources=self.step.resources(),
            default_resources=self.step_defaults.resources(),
        )


class FreeSpace(_Model):
    """A minimum of free space: a size, a percentage of the filesystem, or none."""

    size: int = 0  # bytes
    percent: float = 0.0


def parse_free_space(value: object) -> object:
    """FreeSpace from "2G", 1073741824, "5%", or 0 / none (no minimum)."""
    if value is None or isinstance(value, FreeSpace | dict):
        return value if value is not None else FreeSpace()
    text = str(value).strip()
    if text in ("0", "0%", "none"):
        return FreeSpace()
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            percent = -1.0
        if not 0 < percent < 100:
            raise ValueError(f"{value!r} is not a percentage between 0 and 100, like 5%")
        return FreeSpace(percent=percent)
    try:
        return FreeSpace(size=parse_size(value))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a size or a percentage; use e.g. 2G, 500M or 5%"
        ) from None


class DaemonConfig(_Model):
    shutdown_grace: Duration = 60.0  # on SIGTERM, running steps get this long to finish
    lease: Duration = 60.0  # an attempt's lease; a worker silent this long is lost
    max_attempts: int = Field(3, ge=1, le=20)  # lost workers retried up to this many attempts
    max_concurrent_polls: int = Field(4, ge=1, le=64)
    spare_workers: int = Field(1, ge=0, le=16)  # started ahead, so a push starts at once
    # A worker takes runs one after another; it is replaced after this many runs,
    # this long idle, or once its memory grew past this, so leaks cannot pile up.
    worker_max_runs: int = Field(100, ge=1, le=1_000_000)
    worker_max_idle: Duration = 3600.0
    worker_max_rss: int = 256 << 20
    # Runs wait while the filesystem of STATE/workspaces, or of the state dir
    # (database, logs, mirrors), has less free space than this.
    min_free_space: FreeSpace = FreeSpace(size=1 << 30)
    min_free_state_space: FreeSpace = FreeSpace(size=256 << 20)

    _durations = field_validator("shutdown_grace", "lease", "worker_max_idle", mode="before")(
        lambda v: parse_duration(v)
    )
    _rss = field_validator("worker_max_rss", mode="before")(lambda v: parse_size(v))
    _free = field_validator("min_free_space", "min_free_state_space", mode="before")(
        lambda v: parse_free_space(v)
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


class WebConfig(_Model):
    """The web UI and API. Without a token they are read-only."""

    token_file: str | None = None  # the operator's token, for cancel, retry, trigger
    token_credential: str | None = None  # or a systemd credential name

    @model_validator(mode="after")
    def _one_token(self) -> WebConfig:
        if self.token_file and self.token_credential:
            raise ValueError("give token_file or token_credential, not both")
        return self


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
    web: WebConfig = WebConfig()
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
