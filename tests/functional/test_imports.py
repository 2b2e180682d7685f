"""What each light part imports, seen from a fresh interpreter (the test process has long
imported TensorFlow): `secure-maas --help`, the audit tools and the training planner start
without TensorFlow, Keras or Flask, as STYLE.md requires."""

from __future__ import annotations

import subprocess
import sys


def test_cli_starts_without_tensorflow() -> None:
    code = (
        "import sys; from secure_maas.cli import cli; "
        "from click.testing import CliRunner; "
        "r = CliRunner().invoke(cli, ['--help']); "
        "assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('tensorflow', 'keras', 'flask', 'dp_accounting', 'sklearn', "
        "'scipy') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_registry_package_does_not_import_tensorflow() -> None:
    code = "import sys, secure_maas.registry.signature; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_dataset_accounting_and_attack_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys; import secure_maas.training, secure_maas.training.datasets, "
        "secure_maas.training.accounting, secure_maas.training.attack, "
        "secure_maas.training.auto, secure_maas.training.dpstats; "
        "print(','.join(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_the_options_import_no_tensorflow() -> None:
    code = (
        "import sys, secure_maas.training.options; "
        "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_the_plan_imports_no_tensorflow() -> None:
    code = (
        "import sys, secure_maas.training.plan; "
        "print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
