"""docs/console.md names every console route, every setting of the console and the CSP the
console sends, so the page cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask

from secure_maas.config import Settings, env_name
from secure_maas.console import views
from secure_maas.console.headers import CONTENT_SECURITY_POLICY

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "console.md"


def _routes() -> set[str]:
    app = Flask("routes-only")
    app.register_blueprint(views.bp)
    return {
        re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"<\1>", rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("console.") and rule.endpoint != "console.static"
    }


def test_the_guide_names_every_console_route() -> None:
    guide = GUIDE.read_text()
    routes = _routes()
    assert "/console/audit/<seq>" in routes and "/console/signin" in routes
    for route in routes:
        assert f"`{route}`" in guide or f"{route}`" in guide, route


def test_the_guide_names_the_console_settings_and_its_policy() -> None:
    guide = " ".join(GUIDE.read_text().split())
    for name in Settings.__dataclass_fields__:
        if name.startswith("console_"):
            assert env_name(name) in guide, name
    assert CONTENT_SECURITY_POLICY in guide
