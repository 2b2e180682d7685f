"""Docs kept true by tests: every command has help with an example, every setting is documented."""

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from secure_maas.cli import cli
from secure_maas.config import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        found.append(path)
        if isinstance(command, click.Group):
            found.extend(all_commands(command, path))
    return found


COMMANDS = all_commands(cli)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    if not isinstance(command, click.Group):
        assert "Example" in result.output, f"`secure-maas {' '.join(path)} --help` has no example"


@pytest.mark.parametrize("path", [p for p in COMMANDS if len(p) == 1], ids=" ".join)
def test_every_command_group_is_in_the_readme(path: tuple[str, ...]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"secure-maas {path[0]}" in readme


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_every_setting_is_in_the_readme_configuration_table(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"| `{env_name(name)}` |" in readme


def test_keys_folder_tracks_only_its_readme_and_gitignore() -> None:
    assert (ROOT / "keys" / "README.md").is_file()
    ignore = (ROOT / "keys" / ".gitignore").read_text().split()
    assert ignore[-3:] == ["*", "!.gitignore", "!README.md"] or {"*", "!README.md"} <= set(ignore)


def training_guide_commands() -> dict[str, list[str]]:
    """The training guide's `secure-maas train ...` commands, by model name, as argument lists."""
    import shlex

    text = (ROOT / "docs" / "training.md").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.startswith("secure-maas train "):
            args = shlex.split(line)[2:]
            found[args[args.index("--model-name") + 1]] = args
    return found


def test_the_training_guide_trains_exactly_what_the_demo_and_the_utility_benchmark_train() -> None:
    from secure_maas.cli.demo_cmd import MODELS

    commands = training_guide_commands()
    for item in MODELS:
        args = commands[item.model]
        assert args[args.index("--dataset") + 1] == item.dataset
        for option, value in item.train.items():
            flag = "--" + option.replace("_", "-")
            given = args[args.index(flag) + 1]
            if isinstance(value, tuple):
                assert given == ",".join(map(str, value)), flag
            elif isinstance(value, float):
                assert float(given) == value, flag
            else:
                assert given == str(value), flag
    # A figure the docs call DP must come from a model that carries the guarantee.
    assert all("--noise-seed" not in args for args in commands.values())


def test_the_readme_is_short_and_every_link_in_the_docs_resolves() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_bytes()) < 15_000, "details belong in docs/"
    pages = [readme, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_the_readme_states_how_long_the_two_test_commands_take() -> None:
    """A newcomer knows what `make test` and `make check` cost before running them."""
    text = (ROOT / "README.md").read_text()
    for command in ("make test", "make check"):
        found = re.search(re.escape(f"`{command}`") + r"[^.]*?about [0-9½]+ minutes", text)
        assert found, f"README.md does not say how long {command} takes"


def test_the_conformance_table_claims_only_what_the_api_serves() -> None:
    """Each endpoint family the README's conformance table calls supported is a route."""
    from secure_maas.serving.openapi import document

    text = (ROOT / "README.md").read_text()
    section = text.split("## Conformance with TF Serving and Triton", 1)[1].split("\n## ", 1)[0]
    paths = " ".join(document()["paths"])
    for claim, route in (
        ("`:classify`", ":classify"),
        ("`:regress`", ":regress"),
        ("model configuration", "/config"),
        ("statistics", "/stats"),
        ("repository index/load/unload", "/v2/repository/models/{name}/unload"),
        ("`/metrics`", "/metrics"),
    ):
        assert claim in section, claim
        assert route in paths, route


def test_the_policy_file_guide_names_every_action() -> None:
    from secure_maas.actions import Action

    guide = (ROOT / "policies" / "README.md").read_text()
    for action in Action:
        assert action.value in guide, action
