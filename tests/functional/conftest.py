"""Fixtures of the serving tests: a fresh app per test over the module's prepared `instance`
(each serving module defines its own `instance`, on SQLite and PostgreSQL), so no test sees
another's caches, quota leases or metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from secure_maas.serving.app import close_app, create_app
from tests.functional.serving_support import Instance


@pytest.fixture
def app(instance: Instance) -> Iterator[Flask]:
    made = create_app(instance.settings)
    yield made
    close_app(made)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
