"""``medattn ... --help`` in tests: the text it prints, once its exit status is checked."""

from __future__ import annotations

import pytest

from medattn.cli import main


def help_text(capsys, *command: str) -> str:
    """What ``medattn COMMAND --help`` prints; fails the test unless it exits with status 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out
