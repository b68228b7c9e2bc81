"""The one ``anogan`` command: each subcommand runs the same main as its ``anogan-<name>`` alias."""

import sys
from pathlib import Path

import pytest

from anogan.cli.main import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_every_alias_script_is_a_subcommand():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.pop("anogan") == "anogan.cli.main:main"
    assert scripts == {f"anogan-{name}": f"{module}:main" for name, (module, _) in COMMANDS.items()}


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anogan: unknown command 'trian'; use one of train, predict, export, serve, compare, report, sweep-summary"]
    assert main([]) == 2


@pytest.mark.parametrize("name", ["compare", "report", "sweep-summary"])
def test_subcommand_help_is_its_own(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: anogan " + name)


def test_subcommand_gets_its_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2  # compare's own error for missing runs
    assert "error:" in capsys.readouterr().err
