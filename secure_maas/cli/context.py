"""What every command shares: settings, the database engine and the keyring, made on demand.

Nothing is loaded until a command asks for it, so `--help` works even with a broken
configuration, and a command that needs no database never connects to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from secure_maas.config import Settings, load_settings
from secure_maas.db import connect_check, create_engine
from secure_maas.keys import Keyring
from secure_maas.registry.store import ArtifactStore


@dataclass
class AppContext:
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def engine(self) -> Engine:
        """The engine for the configured database, checked reachable once."""
        if self._engine is None:
            engine = create_engine(self.settings.database_url)
            connect_check(engine)
            self._engine = engine
        return self._engine

    def keyring(self) -> Keyring:
        return Keyring.open(self.settings.keys_dir)

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.store_dir)
