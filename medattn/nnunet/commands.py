"""Run nnU-Net's own command-line tools in subprocesses.

nnU-Net's planning, preprocessing, training and prediction use spawn-based process pools
that hang when started from an interactive interpreter or from code without a
``__main__`` guard; running its console scripts in a subprocess (with a timeout) is the
robust way to drive them from Python, tests and pipelines alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

from medattn.nnunet import ENV_VAR, ext_trainer_value


class NNUNetCommandError(RuntimeError):
    """An nnU-Net command failed; the message holds the command and the end of its output."""


def nnunet_environment(
    raw: str | Path,
    preprocessed: str | Path,
    results: str | Path,
    *,
    n_proc: int | None = None,
    compile: bool = False,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment variables for nnU-Net with medattn's trainers registered.

    Args:
        raw, preprocessed, results: nnU-Net's three data folders.
        n_proc: worker processes for nnU-Net's data loading (``nnUNet_def_n_proc``);
            default: the number of CPUs, at most 4.
        compile: allow ``torch.compile`` (nnU-Net only compiles on CUDA anyway).
        base: environment to extend (default: ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    env.update(
        nnUNet_raw=str(raw),
        nnUNet_preprocessed=str(preprocessed),
        nnUNet_results=str(results),
        nnUNet_def_n_proc=str(n_proc or min(4, os.cpu_count() or 1)),
        nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", str(n_proc or min(4, os.cpu_count() or 1))),
        nnUNet_compile="1" if compile else "0",
    )
    env[ENV_VAR] = ext_trainer_value(env.get(ENV_VAR, ""))
    return env


def nnunet_executable(name: str) -> str:
    """Path of an nnU-Net console script, preferring the one beside this interpreter."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise NNUNetCommandError(f"{name} not found: is nnunetv2 installed in this environment?")
    return found


def run_nnunet(
    name: str,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = 3600,
    log_file: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run nnU-Net's console script ``name`` with ``args``.

    Raises:
        NNUNetCommandError: on a non-zero exit or a timeout, with the command line and the
            last lines of its output.
    """
    command = [nnunet_executable(name), *map(str, args)]
    try:
        result = subprocess.run(
            command, env=dict(env), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        raise NNUNetCommandError(f"{' '.join(command)} timed out after {timeout:.0f} s") from err
    output = result.stdout + result.stderr
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        Path(log_file).write_text(output, encoding="utf-8")
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise NNUNetCommandError(f"{' '.join(command)} exited with {result.returncode}:\n{tail}")
    return result
