"""Every table of secure-maas, gathered for Alembic.

Importing this module imports each package's models so that `Base.metadata` is complete; it
must stay free of TensorFlow and Flask imports.
"""

from secure_maas.audit import models as audit_models  # noqa: F401
from secure_maas.auth import models as auth_models  # noqa: F401
from secure_maas.console import models as console_models  # noqa: F401
from secure_maas.db import state  # noqa: F401  (registers its tables)
from secure_maas.db.base import Base
from secure_maas.policy import models as policy_models  # noqa: F401
from secure_maas.registry import models  # noqa: F401
from secure_maas.training import models as training_models  # noqa: F401

metadata = Base.metadata
