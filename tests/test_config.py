"""The daemon config: every problem listed with file:line, defaults, secrets from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciwatch.config import (
    Config,
    parse_config,
    parse_duration,
    parse_size,
    read_config,
    read_secrets,
)
from ciwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text.encode(), "ciwatch.yaml")
    return list(exc.value.problems)


def test_the_shipped_example_is_valid():
    cfg, _ = read_config(ROOT / "config.example.yaml")
    assert [r.name for r in cfg.repos] == ["app", "lib"]
    assert cfg.limits.max_timeout == 6 * 3600 and cfg.limits.log_cap == 16 << 20
    assert cfg.repos[1].poll_interval == 60


def test_empty_or_comment_only_file_means_defaults():
    assert parse_config(b"", "c.yaml") == Config()
    assert parse_config(b"# nothing here\n", "c.yaml") == Config()


def test_every_problem_is_listed_with_its_line():
    found = problems(
        "concurrency: lots\n"
        "limits:\n"
        "  max_timout: 2h\n"
        "executor: {kind: docker}\n"
        "repos:\n"
        "  - {name: app}\n"
    )
    text = "\n".join(found)
    assert "ciwatch.yaml:1: concurrency:" in text
    assert "ciwatch.yaml:3: limits.max_timout:" in text and "did you mean 'max_timeout'" in text
    assert "ciwatch.yaml:4: executor.kind:" in text
    assert "give exactly one of 'path'" in text
    assert len(found) >= 4


def test_references_between_sections_are_checked():
    text = "\n".join(problems("repos:\n  - {name: app, path: /srv/app.git, forge: nowhere}\n"))
    assert "forge 'nowhere'" in text


def test_malformed_yaml_is_a_config_error_with_position():
    text = "\n".join(problems("limits: [unclosed\n"))
    assert "ciwatch.yaml:" in text


@pytest.mark.parametrize(
    "value,seconds", [(30, 30.0), ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0)]
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", 0, -5, "0s", float("inf"), True])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value,n", [(1024, 1024), ("512k", 512 << 10), ("16MB", 16 << 20), ("1GiB", 1 << 30)]
)
def test_sizes(value, n):
    assert parse_size(value) == n


def test_secrets_come_from_files_and_missing_files_are_named(tmp_path):
    (tmp_path / "tok").write_text("abc123\n")
    cfg = parse_config(b"secrets:\n  TOKEN: {file: tok}\n  OTHER: {file: missing}\n", "c.yaml")
    with pytest.raises(ConfigError) as exc:
        read_secrets(cfg, tmp_path)
    assert "secrets.OTHER.file: cannot read missing" in str(exc.value)
    cfg = parse_config(b"secrets:\n  TOKEN: {file: tok}\n", "c.yaml")
    assert read_secrets(cfg, tmp_path) == {"TOKEN": "abc123"}


def test_secret_values_are_never_inline():
    text = "\n".join(problems("secrets:\n  TOKEN: hunter2\n"))
    assert "secrets.TOKEN" in text


def test_state_dir_defaults(tmp_path):
    cfg = Config()
    assert cfg.state_path({}, tmp_path) == tmp_path / ".ciwatch"
    assert cfg.state_path({"STATE_DIRECTORY": "/var/lib/ciwatch"}, tmp_path) == Path(
        "/var/lib/ciwatch"
    )
    assert Config(state_dir="st").state_path({}, tmp_path) == tmp_path / "st"
