"""`medattn nnunet env|list|adapt-checkpoint`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medattn.cli import main
from medattn.nnunet import ENV_VAR, ext_trainer_value, trainer_folder
from medattn.nnunet.catalog import trainer_classes

MEDATTN = str(Path(sys.executable).with_name("medattn"))


def test_env_output_evaluated_by_bash_lets_nnunet_find_the_trainers(tmp_path):
    lookup = (
        "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find;"
        "print(find('nnUNetTrainerDSM').__name__, find('nnUNetTrainerDIA_smoke').__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    script = f'eval "$({MEDATTN} nnunet env)" && "{sys.executable}" -c "{lookup}"'
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "nnUNetTrainerDSM nnUNetTrainerDIA_smoke"


def test_env_keeps_other_folders_and_does_not_repeat_itself(tmp_path):
    other = str(tmp_path)
    value = ext_trainer_value(os.pathsep.join([other, str(trainer_folder())]))
    assert value.split(os.pathsep) == [str(trainer_folder()), other]


def test_trainer_folder_holds_only_trainer_modules():
    modules = sorted(p.name for p in trainer_folder().glob("*.py") if p.name != "__init__.py")
    assert modules == ["medattn_trainers.py"]


def test_list_prints_every_trainer(capsys):
    assert main(["nnunet", "list"]) == 0
    table = capsys.readouterr().out
    for name in trainer_classes():
        assert f"`{name}`" in table
    for required in ("nnUNetTrainerDSM", "nnUNetTrainerSNA", "nnUNetTrainerDIA", "nnUNetTrainerDIALight",
                     "nnUNetTrainerSE", "nnUNetTrainerDSM_smoke", "nnUNetTrainerSNA_smoke",
                     "nnUNetTrainerDIA_smoke", "nnUNetTrainerSE_smoke"):
        assert required in trainer_classes()


def test_trainers_keep_nnunets_init_signature():
    import inspect

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    def shape(function):  # what nnU-Net rebuilds its init arguments from
        return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]

    stock = shape(nnUNetTrainer.__init__)
    for name, cls in trainer_classes().items():
        assert shape(cls.__init__) == stock, name
        built = inspect.signature(cls.build_network_architecture).parameters
        assert list(built) == ["plans_manager", "configuration_manager", "num_input_channels",
                               "num_output_channels", "enable_deep_supervision"], name


def test_adapt_checkpoint_rejects_a_file_that_is_not_an_nnunet_checkpoint(tmp_path, capsys):
    import torch

    bogus = tmp_path / "bogus.pth"
    torch.save({"weights": {}}, bogus)
    assert main(["nnunet", "adapt-checkpoint", str(bogus), "--trainer", "nnUNetTrainerDSM",
                 "-o", str(tmp_path / "o.pth")]) == 2
    assert f"error: {bogus}: not an nnU-Net checkpoint" in capsys.readouterr().err  # a message, no traceback
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("argv", [["nnunet", "--help"], ["nnunet", "env", "--help"], ["nnunet", "list", "--help"],
                                  ["nnunet", "adapt-checkpoint", "--help"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_readme_trainer_table_matches_the_code(capsys):
    from tests.conftest import REPO_ROOT

    main(["nnunet", "list"])
    table = capsys.readouterr().out.strip()
    assert table in (REPO_ROOT / "README.md").read_text(), "README's trainer table is stale: paste `medattn nnunet list`"
