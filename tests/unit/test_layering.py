"""Architecture rules that no reviewer should have to catch by eye."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "secure_maas"


def python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_crypto_package_imports_cryptography() -> None:
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in python_files()
        if "crypto" not in path.relative_to(PACKAGE).parts[:1]
        and any(name.split(".")[0] == "cryptography" for name in imported_modules(path))
    ]
    assert offenders == []


def test_no_assert_in_library_code() -> None:
    """Security checks must raise: asserts vanish under `python -O`."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in python_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert offenders == []


def test_domain_packages_know_nothing_of_flask() -> None:
    for package in ("auth", "policy", "audit", "crypto", "keys", "db"):
        for path in (PACKAGE / package).rglob("*.py") if (PACKAGE / package).exists() else []:
            assert "flask" not in {n.split(".")[0] for n in imported_modules(path)}, path


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
