"""Which input files form a case, and what the case's outputs are called.

nnU-Net's convention: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... are the channels of
case ``CASE``; its label map is ``CASE.nii.gz``. A file without a four-digit channel
suffix (``CASE.nii.gz``) is a one-channel case that keeps its name. Outputs keep the
input's image format (``.nii.gz`` in, ``.nii.gz`` out).

Grouping never raises for one bad case: problems (a missing channel, too many channels,
two inputs that would write the same output) are returned beside the good cases, so a
batch goes on without them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from medattn.data.io import case_name, image_suffix, list_images

__all__ = ["Case", "GroupingProblem", "collect_inputs", "group_cases", "split_channel"]

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case to predict.

    Attributes:
        name: the case identifier (output file stem).
        files: one input file per channel, channel 0 first.
        suffix: image suffix of the inputs and the outputs (".nii.gz", ".nrrd", ...).
    """

    name: str
    files: tuple[Path, ...]
    suffix: str

    def label_path(self, output_dir: str | os.PathLike) -> Path:
        """``output_dir/{name}{suffix}``: the label map."""
        return Path(output_dir) / f"{self.name}{self.suffix}"

    def probability_paths(self, output_dir: str | os.PathLike) -> tuple[Path, Path]:
        """``{name}.npz`` (class probabilities) and ``{name}.pkl`` (nnU-Net's properties)."""
        return Path(output_dir) / f"{self.name}.npz", Path(output_dir) / f"{self.name}.pkl"


@dataclass(frozen=True)
class GroupingProblem:
    """An input that cannot be predicted, with the reason (the message names the files)."""

    name: str
    message: str


def split_channel(path: str | os.PathLike) -> tuple[str, int | None]:
    """``(case, channel)`` of an input file name; ``channel`` is None without a ``_DDDD`` suffix.

    Example:
        >>> split_channel("liver_001_0000.nii.gz")
        ('liver_001', 0)
        >>> split_channel("liver_001.nii.gz")
        ('liver_001', None)
    """
    stem = case_name(path)
    match = _CHANNEL_SUFFIX.match(stem)
    return (match["case"], int(match["channel"])) if match else (stem, None)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: folders are listed (non-recursively), files kept.

    Raises:
        FileNotFoundError: for an input that does not exist.
        ValueError: for a file that is not an image by its name, or when nothing is found.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(list_images(path))
        elif path.is_file():
            if not image_suffix(path):
                raise ValueError(f"{path}: not an image file name (expected one of .nii.gz, .nii, .nrrd, .mha, ...)")
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise ValueError(f"no image files found in {', '.join(map(str, inputs))}")
    return sorted(dict.fromkeys(files), key=lambda p: (p.name, str(p)))


def group_cases(files: Iterable[Path], num_channels: int) -> tuple[list[Case], list[GroupingProblem]]:
    """Group input files into cases of ``num_channels`` channels.

    Args:
        files: image files (see :func:`collect_inputs`).
        num_channels: channels the model expects.

    Returns:
        ``(cases, problems)``: cases sorted by name, and one :class:`GroupingProblem` per
        input that cannot form a case.

    Raises:
        ValueError: if ``num_channels`` is not positive.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be >= 1, got {num_channels!r}")
    by_case: dict[str, list[tuple[int | None, Path]]] = {}
    for path in files:
        case, channel = split_channel(path)
        by_case.setdefault(case, []).append((channel, path))
    cases, problems = [], []
    for name in sorted(by_case):
        case_or_problem = _make_case(name, by_case[name], num_channels)
        (cases if isinstance(case_or_problem, Case) else problems).append(case_or_problem)
    return cases, problems


def _make_case(name: str, entries: list[tuple[int | None, Path]], num_channels: int) -> Case | GroupingProblem:
    channels = [channel for channel, _ in entries]
    plain = channels.count(None)
    if plain > 1 or (plain and len(entries) > 1) or len(set(channels)) != len(channels):
        listed = ", ".join(str(path) for _, path in entries)
        return GroupingProblem(
            name, f"{listed}: these inputs would all write the output {name!r}; rename or remove all but one")
    if plain:
        return _plain_case(name, entries[0][1], num_channels)
    return _channel_case(name, {channel: path for channel, path in entries}, num_channels)


def _plain_case(name: str, path: Path, num_channels: int) -> Case | GroupingProblem:
    if num_channels != 1:
        return GroupingProblem(
            name, f"{path}: the model needs {num_channels} channels, given as {name}_0000{image_suffix(path)} ... "
            f"{name}_{num_channels - 1:04d}{image_suffix(path)}; found this single file")
    return Case(name, (path,), image_suffix(path))


def _channel_case(name: str, channels: dict[int, Path], num_channels: int) -> Case | GroupingProblem:
    found = [channels[c] for c in sorted(channels)]
    if sorted(channels) != list(range(num_channels)):
        hint = ""
        if num_channels == 1 and 0 not in channels:
            hint = (f" (files named NAME_DDDD are channel DDDD of case NAME, nnU-Net's convention; "
                    f"a one-channel case is NAME_0000{image_suffix(found[0])} or NAME{image_suffix(found[0])})")
        return GroupingProblem(
            name, f"case {name!r}: wrong channel count: the model needs channels "
            f"{', '.join(f'_{c:04d}' for c in range(num_channels))}, found {', '.join(map(str, found))}{hint}")
    suffixes = {image_suffix(p) for p in found}
    if len(suffixes) != 1:
        return GroupingProblem(name, f"case {name!r}: channels in different formats: {', '.join(map(str, found))}")
    return Case(name, tuple(found), suffixes.pop())
