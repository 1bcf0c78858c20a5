"""Training run folders, shared by every medattn trainer: a run is never overwritten, and a
resumed run keeps the settings that define it."""

from __future__ import annotations

import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["adopt_stored_settings", "check_run_folder", "field_default", "read_run_checkpoint"]


def check_run_folder(out: str | os.PathLike, run_files: Iterable[str], last: str, resume: bool,
                     log: Callable[[str], None], clean: bool = True) -> bool:
    """Refuse to overwrite a run; whether ``out/last`` is there to resume from.

    Args:
        out: the run folder.
        run_files: every file a run writes there: any of them means the folder holds a run
            (keeping only the best checkpoint is common, so the last one alone is not enough).
        last: the checkpoint a resume continues from.
        resume: whether the user asked to continue.
        log: prints the note that a resume without a checkpoint starts a new run.
        clean: remove the temporaries a killed save left (one process only, under DDP).

    Raises:
        ValueError: when the folder holds a run and ``resume`` is off, or holds one
            without ``last`` and ``resume`` is on (nothing is overwritten).
    """
    from medattn.data.io import check_output_folder, remove_stale_temporaries

    out = check_output_folder(out, "--out")
    if clean:
        remove_stale_temporaries(out)
    existing = [name for name in run_files if (out / name).exists()]
    if not resume:
        if existing:
            raise ValueError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it or "
                             "choose another --out (nothing was overwritten)")
        return False
    if last not in existing:
        if existing:
            raise ValueError(f"--resume: {out} holds {', '.join(existing)} but no {last} to continue from; choose "
                             "another --out, or move those files away to start a new run there")
        # Like nnU-Net's --c: nothing to continue (e.g. stopped during the first epoch).
        log(f"--resume: no {last} in {out}; starting a new run")
        return False
    return True


def field_default(cls, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``."""
    for f in fields(cls):
        if f.name == name:
            return f.default_factory() if f.default_factory is not MISSING else f.default
    raise KeyError(name)


def adopt_stored_settings(config, stored: dict, keys: Iterable[str], where: Path,
                          normalise: Callable[[Any], Any] = lambda value: value) -> None:
    """Give ``config`` the stored run's value of each of ``keys``.

    A value left at its default adopts the stored one; a value given explicitly must equal
    it (compared after ``normalise``).

    Raises:
        ValueError: naming the setting, both values and the checkpoint.
    """
    for key in keys:
        given = normalise(getattr(config, key))
        if given != stored[key] and given != normalise(field_default(type(config), key)):
            raise ValueError(f"--resume: {key} is {stored[key]!r} in {where}, but {given!r} was given")
        setattr(config, key, stored[key])


def read_run_checkpoint(path: str | os.PathLike, checkpoint_format: str, version: int, what: str,
                        empty_hint: str = "", map_location="cpu") -> dict:
    """A trainer's checkpoint, read with ``weights_only`` loading and checked for its format.

    Args:
        path: the checkpoint file.
        checkpoint_format: the value its ``format`` entry must have.
        version: the newest ``format_version`` this medattn reads.
        what: the kind of checkpoint, for messages ("MONAI", "image").
        empty_hint: what to do about an empty file (appended to that message).
        map_location: as for ``torch.load``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for an empty, unreadable, foreign or newer checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the checkpoint is empty (0 bytes), e.g. from a save that was cut off{empty_hint}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "the file ends early (truncated?)"
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {reason})") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != checkpoint_format:
        raise ValueError(f"{path}: not a medattn {what} checkpoint (no format {checkpoint_format!r})")
    if checkpoint.get("format_version", 0) > version:
        raise ValueError(f"{path}: checkpoint format version {checkpoint['format_version']} is newer than this "
                         f"medattn understands ({version})")
    return checkpoint
