"""Settings: one frozen object built from `SECURE_MAAS_*` variables and an optional YAML file.

Precedence is environment over file over default, as operators of Vault and TF Serving expect.
Unknown variables and file keys are errors rather than silently ignored: a mistyped
`SECURE_MAAS_DATABSE_URL` must not quietly fall back to the default database. Every path the
program writes lies under `keys_dir`, `store_dir` or the SQLite file of `database_url`, so a test
or a second instance can run beside the first by setting these three.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from secure_maas.errors import ConfigError
from secure_maas.timeutil import format_duration, parse_duration

ENV_PREFIX = "SECURE_MAAS_"
CONFIG_FILE_VAR = "SECURE_MAAS_CONFIG"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_TOKEN_TTL_CEILING = timedelta(days=30)


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Build it with `load_settings()`; tests build it directly."""

    database_url: str = "sqlite:///var/secure_maas.db"
    keys_dir: Path = Path("keys")
    store_dir: Path = Path("var/store")
    issuer: str = "secure-maas"
    audience: str = "secure-maas"
    max_token_ttl: timedelta = timedelta(hours=24)
    log_level: str = "INFO"

    def describe(self) -> list[tuple[str, str]]:
        """(variable, display value) pairs, safe to print: passwords in URLs are masked."""
        return [(env_name(f.name), _display(f.name, getattr(self, f.name))) for f in fields(self)]


def env_name(field_name: str) -> str:
    """The environment variable that sets `field_name`."""
    return ENV_PREFIX + field_name.upper()


def _display(name: str, value: Any) -> str:
    if name == "database_url":
        return mask_url(str(value))
    if isinstance(value, timedelta):
        return format_duration(value)
    return str(value)


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _parse_database_url(text: str) -> str:
    try:
        url: URL = make_url(text)
    except ArgumentError as exc:
        raise ValueError("not a database URL (example: sqlite:///var/secure_maas.db)") from exc
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        return text
    raise ValueError(
        f"unsupported database {url.drivername!r} (use sqlite:///PATH or postgresql+psycopg://...)"
    )


def _parse_path(text: str) -> Path:
    if not text.strip():
        raise ValueError("must not be empty")
    return Path(text).expanduser()


def _parse_name(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text):
        raise ValueError("must be a non-empty string without spaces")
    return text


def _parse_ttl(text: str) -> timedelta:
    ttl = parse_duration(text)
    if not timedelta(seconds=60) <= ttl <= MAX_TOKEN_TTL_CEILING:
        raise ValueError(f"{text!r} is outside 60s..{format_duration(MAX_TOKEN_TTL_CEILING)}")
    return ttl


def _parse_log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


_PARSERS: dict[str, Callable[[str], Any]] = {
    "database_url": _parse_database_url,
    "keys_dir": _parse_path,
    "store_dir": _parse_path,
    "issuer": _parse_name,
    "audience": _parse_name,
    "max_token_ttl": _parse_ttl,
    "log_level": _parse_log_level,
}


def _read_file(path: Path) -> dict[str, str]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{CONFIG_FILE_VAR}: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{CONFIG_FILE_VAR}: {path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{CONFIG_FILE_VAR}: {path} must hold a mapping of setting: value")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key not in _PARSERS:
            raise ConfigError(f"{path}: unknown setting {key!r}{_suggest(str(key), _PARSERS)}")
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{path}: {key} must be a single value")
        values[key] = str(value)
    return values


def _suggest(name: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from `environ` (default `os.environ`) and the file it may name.

    Raises `ConfigError` naming the variable (or file and key) of the first invalid value.
    """
    env = os.environ if environ is None else environ
    known_vars = {env_name(name): name for name in _PARSERS}
    for var in env:
        if var.startswith(ENV_PREFIX) and var not in known_vars and var != CONFIG_FILE_VAR:
            raise ConfigError(f"unknown setting {var}{_suggest(var, known_vars)}")

    sources: dict[str, tuple[str, str]] = {}
    config_file = env.get(CONFIG_FILE_VAR)
    if config_file:
        file_path = Path(config_file).expanduser()
        for key, value in _read_file(file_path).items():
            sources[key] = (value, f"{key} in {file_path}")
    for var, name in known_vars.items():
        if var in env:
            sources[name] = (env[var], var)

    values: dict[str, Any] = {}
    for name, (text, origin) in sources.items():
        try:
            values[name] = _PARSERS[name](text)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from exc
    return Settings(**values)
