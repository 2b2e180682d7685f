"""Settings for an external identity provider: all of issuer and JWKS, or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_maas.config import load_settings
from secure_maas.errors import ConfigError

IDP = {"SECURE_MAAS_EXTERNAL_ISSUER": "https://idp.example", "SECURE_MAAS_EXTERNAL_JWKS": "j.json"}


def test_no_external_provider_by_default() -> None:
    settings = load_settings({})
    assert settings.external_issuer is None and settings.external_jwks is None
    assert ("SECURE_MAAS_EXTERNAL_JWKS", "(none)") in settings.describe()


def test_an_external_provider_is_read_from_the_environment() -> None:
    settings = load_settings({**IDP, "SECURE_MAAS_EXTERNAL_ROLES_CLAIM": "realm_access.roles"})
    assert settings.external_issuer == "https://idp.example"
    assert settings.external_jwks == Path("j.json")
    assert settings.external_roles_claim == "realm_access.roles"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SECURE_MAAS_EXTERNAL_ISSUER": "https://idp"}, "must be set together"),
        ({"SECURE_MAAS_EXTERNAL_JWKS": "j.json"}, "must be set together"),
        ({"SECURE_MAAS_EXTERNAL_ROLES_CLAIM": "roles"}, "needs SECURE_MAAS_EXTERNAL_ISSUER"),
        ({**IDP, "SECURE_MAAS_EXTERNAL_ISSUER": "secure-maas"}, "must differ"),
        ({**IDP, "SECURE_MAAS_EXTERNAL_ROLES_CLAIM": "a..b"}, "not a claim name"),
        ({**IDP, "SECURE_MAAS_EXTERNAL_ROLES_CLAIM": "has space"}, "not a claim name"),
    ],
)
def test_incomplete_or_conflicting_provider_settings_are_refused(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)
