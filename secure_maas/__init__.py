"""secure-maas: a privacy-preserving model service.

This package imports nothing heavy at import time: `secure-maas --help` and the audit tools
must start in well under a second, so TensorFlow is only imported by the modules that train
or serve models.
"""

__version__ = "0.1.0"
