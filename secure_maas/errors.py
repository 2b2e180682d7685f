"""The root of the domain exceptions.

Library code raises subclasses of `SecureMaasError` with a message written for the person who
must act on it (an operator at a terminal); the CLI prints that message on one line and exits 1.
Anything else escaping to the CLI is a bug and is shown as such.
"""


class SecureMaasError(Exception):
    """A failure the user can fix: bad configuration, a missing file, an unknown id."""


class ConfigError(SecureMaasError):
    """A setting has an invalid value; the message names the variable or file key."""
