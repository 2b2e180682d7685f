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
import re
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
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
_SIZE = re.compile(r"^(\d+)\s*(|k|kib|m|mib|g|gib)$", re.IGNORECASE)
_UNITS = {"": 1, "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}


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
    external_issuer: str | None = None
    external_jwks: Path | None = None
    external_roles_claim: str | None = None
    max_body_bytes: int = 8 * MIB
    max_string_bytes: int = MIB
    body_timeout: timedelta = timedelta(seconds=5)
    cache_bytes: int = 2 * GIB
    batch_max_size: int = 64
    batch_max_wait_us: int = 2000
    model_processes: int = 0
    console_idle_timeout: timedelta = timedelta(minutes=30)
    console_secure_cookie: bool = False

    def describe(self) -> list[tuple[str, str]]:
        """(variable, display value) pairs, safe to print: passwords in URLs are masked."""
        return [(env_name(f.name), _display(f.name, getattr(self, f.name))) for f in fields(self)]


def env_name(field_name: str) -> str:
    """The environment variable that sets `field_name`."""
    return ENV_PREFIX + field_name.upper()


def _display(name: str, value: Any) -> str:
    if value is None:
        return "(none)"
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


def _duration_between(low: timedelta, high: timedelta) -> Callable[[str], timedelta]:
    """A parser of durations (`5`, `5s`, `1m`) bounded to `low`..`high`."""

    def parse(text: str) -> timedelta:
        duration = parse_duration(text)
        if not low <= duration <= high:
            shown = f"{format_duration(low)}..{format_duration(high)}"
            raise ValueError(f"{text!r} is outside {shown}")
        return duration

    return parse


def _parse_claim(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_:/.\-]+", text) or ".." in text or text.startswith("."):
        raise ValueError(f"{text!r} is not a claim name (a dotted path such as realm_access.roles)")
    return text


def _bytes_between(low: int, high: int) -> Callable[[str], int]:
    """A parser of sizes such as `8388608`, `512KiB`, `8MiB`, `2GiB` (K, M, G are binary)."""

    def parse(text: str) -> int:
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a size (bytes, or with KiB, MiB, GiB: 8MiB)")
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
        if not low <= size <= high:
            raise ValueError(f"{text!r} is outside {low}..{high} bytes")
        return size

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise ValueError(f"{text!r} is not a whole number in {low}..{high}")
        return int(text)

    return parse


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


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
    "external_issuer": _parse_name,
    "external_jwks": _parse_path,
    "external_roles_claim": _parse_claim,
    "max_body_bytes": _bytes_between(KIB, GIB),
    "max_string_bytes": _bytes_between(1, GIB),
    "body_timeout": _duration_between(timedelta(seconds=1), timedelta(minutes=5)),
    "cache_bytes": _bytes_between(MIB, 1 << 40),
    "batch_max_size": _int_between(1, 4096),
    "batch_max_wait_us": _int_between(0, 1_000_000),
    "model_processes": _int_between(0, 64),
    "console_idle_timeout": _duration_between(timedelta(minutes=1), timedelta(days=1)),
    "console_secure_cookie": _parse_bool,
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
    settings = Settings(**values)
    _check_external(settings)
    return settings


def _check_external(settings: Settings) -> None:
    """An external identity provider is all of issuer and key set, or nothing."""
    issuer, jwks = env_name("external_issuer"), env_name("external_jwks")
    if (settings.external_issuer is None) != (settings.external_jwks is None):
        raise ConfigError(f"{issuer} and {jwks} must be set together (or neither)")
    if settings.external_roles_claim is not None and settings.external_issuer is None:
        raise ConfigError(f"{env_name('external_roles_claim')} needs {issuer} and {jwks}")
    if settings.external_issuer is not None and settings.external_issuer == settings.issuer:
        raise ConfigError(f"{issuer} must differ from {env_name('issuer')}")
