"""The console's library parts import no Flask, and the serving app that registers the console
imports neither TensorFlow nor dp_accounting (the privacy page imports the latter when first
asked for), seen from a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

LIBRARY = ("sessions", "pages", "chartdata", "integrity", "headers", "models")


def run(code: str) -> str:
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return found.stdout.strip()


def test_the_library_parts_import_no_flask() -> None:
    modules = ", ".join(f"secure_maas.console.{name}" for name in LIBRARY)
    assert run(f"import sys, {modules}; print('flask' in sys.modules)") == "False"


def test_the_app_with_its_console_imports_no_tensorflow_or_dp_accounting() -> None:
    code = (
        "import sys; from secure_maas.serving.app import create_app; "
        "print(','.join(m for m in ('tensorflow', 'keras', 'dp_accounting') if m in sys.modules))"
    )
    assert run(code) == ""
