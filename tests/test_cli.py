"""``medattn``: every command in the parser tree answers ``--help`` (walked from the real
parser, so a new command is covered the day it is registered)."""

from __future__ import annotations

import argparse

import pytest

from medattn.cli import build_parser, main
from tests.cli_help import help_text


def _leaf_commands(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        return [prefix]
    return [leaf for group in groups for name, sub in group.choices.items()
            for leaf in _leaf_commands(sub, (*prefix, name))]


COMMANDS = _leaf_commands(build_parser())


def test_the_tree_holds_every_command_family():
    families = {command[0] for command in COMMANDS}
    assert families == {"convert", "nnunet", "train", "demo", "predict", "evaluate", "explain", "bench"}
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    text = help_text(capsys, *command)
    assert text.startswith(f"usage: medattn {' '.join(command)}")
    assert "options:" in text and len(text.splitlines()) > 5


@pytest.mark.parametrize("group", ["convert", "nnunet", "train", "bench"])
def test_a_group_without_its_command_prints_help_and_exits_2(group, capsys):
    assert main([group]) == 2
    assert f"usage: medattn {group}" in capsys.readouterr().out
