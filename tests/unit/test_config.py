from datetime import timedelta
from pathlib import Path

import pytest

from secure_maas.config import Settings, load_settings, mask_url
from secure_maas.errors import ConfigError


def test_defaults_work_on_a_laptop() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.database_url == "sqlite:///var/secure_maas.db"
    assert settings.keys_dir == Path("keys")
    assert settings.store_dir == Path("var/store")
    assert settings.max_token_ttl == timedelta(hours=24)


def test_environment_sets_each_value() -> None:
    settings = load_settings(
        {
            "SECURE_MAAS_DATABASE_URL": "postgresql://maas:pw@db:5432/maas",
            "SECURE_MAAS_KEYS_DIR": "/etc/maas/keys",
            "SECURE_MAAS_STORE_DIR": "/srv/store",
            "SECURE_MAAS_ISSUER": "https://maas.example",
            "SECURE_MAAS_AUDIENCE": "models",
            "SECURE_MAAS_MAX_TOKEN_TTL": "2h",
            "SECURE_MAAS_LOG_LEVEL": "debug",
        }
    )
    # plain postgresql:// is normalised to the one driver we ship (psycopg 3)
    assert settings.database_url == "postgresql+psycopg://maas:pw@db:5432/maas"
    assert settings.keys_dir == Path("/etc/maas/keys")
    assert settings.store_dir == Path("/srv/store")
    assert settings.issuer == "https://maas.example"
    assert settings.audience == "models"
    assert settings.max_token_ttl == timedelta(hours=2)
    assert settings.log_level == "DEBUG"


def test_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "maas.yaml"
    config.write_text("issuer: from-file\naudience: file-aud\nmax_token_ttl: 3600\n")
    settings = load_settings({"SECURE_MAAS_CONFIG": str(config), "SECURE_MAAS_AUDIENCE": "env-aud"})
    assert settings.issuer == "from-file"
    assert settings.audience == "env-aud"
    assert settings.max_token_ttl == timedelta(hours=1)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SECURE_MAAS_DATABASE_URL", "mysql://x@y/z", "unsupported database"),
        ("SECURE_MAAS_DATABASE_URL", "not a url", "not a database URL"),
        ("SECURE_MAAS_MAX_TOKEN_TTL", "1x", "not a duration"),
        ("SECURE_MAAS_MAX_TOKEN_TTL", "90d", "outside 60s..30d"),
        ("SECURE_MAAS_MAX_TOKEN_TTL", "5", "outside"),
        ("SECURE_MAAS_LOG_LEVEL", "LOUD", "not one of"),
        ("SECURE_MAAS_KEYS_DIR", "", "must not be empty"),
        ("SECURE_MAAS_ISSUER", "has space", "without spaces"),
    ],
)
def test_invalid_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert expected in message
    assert "\n" not in message


def test_unknown_variable_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown setting SECURE_MAAS_DATABSE_URL \(did you "
        r"mean SECURE_MAAS_DATABASE_URL\?\)",
    ):
        load_settings({"SECURE_MAAS_DATABSE_URL": "sqlite:///x.db"})


def test_invalid_file_value_names_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "maas.yaml"
    config.write_text("max_token_ttl: forever\n")
    with pytest.raises(ConfigError, match=rf"max_token_ttl in {config}: 'forever' is not"):
        load_settings({"SECURE_MAAS_CONFIG": str(config)})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("- a\n- b\n", "must hold a mapping"),
        ("databse_url: x\n", "unknown setting 'databse_url' (did you mean database_url?)"),
        ("issuer: [a, b]\n", "issuer must be a single value"),
        ("issuer: 'unclosed\n", "not valid YAML"),
        ("!!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_malformed_file_is_refused(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "maas.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings({"SECURE_MAAS_CONFIG": str(config)})
    assert expected in str(caught.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SECURE_MAAS_CONFIG: cannot read"):
        load_settings({"SECURE_MAAS_CONFIG": str(tmp_path / "absent.yaml")})


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    config = tmp_path / "maas.yaml"
    config.write_text("")
    assert load_settings({"SECURE_MAAS_CONFIG": str(config)}) == Settings()


def test_describe_never_shows_a_password() -> None:
    settings = load_settings({"SECURE_MAAS_DATABASE_URL": "postgresql://maas:hunter2@db/maas"})
    shown = dict(settings.describe())
    assert "hunter2" not in shown["SECURE_MAAS_DATABASE_URL"]
    assert "***" in shown["SECURE_MAAS_DATABASE_URL"]
    assert shown["SECURE_MAAS_MAX_TOKEN_TTL"] == "1d"
    assert mask_url("::::") == "<unparseable URL>"
