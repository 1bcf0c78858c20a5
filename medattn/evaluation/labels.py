"""Label maps: which label values exist, what they are called, and which are scored.

Two spellings are accepted (the format agreed with the converters, see README):

* a JSON file in nnU-Net ``dataset.json`` style, ``{"labels": {"background": 0,
  "aorta": 1, ...}}``, with an optional ``"evaluate_labels": ["aorta", 4, ...]`` (names or
  values) naming the subset to score. The Medical Segmentation Decathlon spelling,
  ``{"labels": {"0": "background", "1": "anterior"}}``, is read as well;
* an inline string ``"1=aorta,2=gallbladder"``.

Background (0) is always a valid value and never scored. Every other value in an image
must appear in the map; :mod:`medattn.evaluation.api` reports the ones that do not.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


class LabelMapError(ValueError):
    """A label map is malformed; the message names its source and the problem."""


@dataclass(frozen=True)
class LabelMap:
    """Names of the foreground label values and the subset that is scored.

    Attributes:
        names: every valid foreground value (> 0) mapped to its name.
        scored: the values that are evaluated, ascending; a subset of ``names``.
        source: where the map came from (a file path or "inline"), for messages.
    """

    names: dict[int, str]
    scored: tuple[int, ...]
    source: str = "inline"

    def __post_init__(self):
        for value, name in self.names.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LabelMapError(f"{self.source}: label values must be integers > 0, got {value!r}")
            if not isinstance(name, str) or not name:
                raise LabelMapError(f"{self.source}: label {value} needs a non-empty name, got {name!r}")
        unknown = sorted(set(self.scored) - set(self.names))
        if unknown:
            raise LabelMapError(f"{self.source}: scored labels {unknown} are not in the label map")
        if not self.scored:
            raise LabelMapError(f"{self.source}: no label to score")

    @property
    def valid_values(self) -> frozenset[int]:
        """Every value an image may contain: background 0 and all mapped labels."""
        return frozenset(self.names) | {0}

    def name_of(self, value: int) -> str:
        """The name of ``value``."""
        return self.names[value]


def default_name(value: int) -> str:
    """Name given to a label found in the data when no label map is supplied."""
    return f"label_{value}"


def parse_label_map(spec: "str | os.PathLike | Mapping[int, str] | LabelMap") -> LabelMap:
    """Build a :class:`LabelMap` from any accepted spelling.

    Args:
        spec: a :class:`LabelMap` (returned as is); a mapping ``{value: name}``; a path to
            a ``dataset.json``-style file; or an inline string ``"1=aorta,2=gallbladder"``.

    Returns:
        The label map; without ``evaluate_labels`` every foreground label is scored.

    Raises:
        LabelMapError: if the file is missing or malformed, or a value or name repeats.
    """
    if isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, Mapping):
        names = {_as_value(k, "inline"): str(v) for k, v in spec.items()}
        names = {k: v for k, v in names.items() if k != 0}
        _check_unique_names(names, "inline")
        return LabelMap(names=names, scored=tuple(sorted(names)), source="inline")
    if not isinstance(spec, (str, os.PathLike)):
        raise LabelMapError(f"label map must be a path, an inline string or a mapping, got {spec!r}")
    text = os.fspath(spec)
    path = Path(text)
    if "=" in text and not path.is_file():
        return _parse_inline(text)
    if not path.is_file():
        raise LabelMapError(
            f"{text}: label map file not found (an inline map looks like \"1=aorta,2=gallbladder\")"
        )
    return _parse_json(path)


def _parse_inline(text: str) -> LabelMap:
    names: dict[int, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        value_text, sep, name = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise LabelMapError(f"inline label map: {item!r} is not of the form VALUE=NAME")
        value = _as_value(value_text.strip(), "inline label map")
        if value in names:
            raise LabelMapError(f"inline label map: value {value} is given twice")
        if value != 0:
            names[value] = name
    _check_unique_names(names, "inline label map")
    return LabelMap(names=names, scored=tuple(sorted(names)), source="inline label map")


def _parse_json(path: Path) -> LabelMap:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LabelMapError(f"{source}: cannot read label map JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise LabelMapError(f"{source}: expected a JSON object with a \"labels\" object")
    labels = data["labels"]
    if labels and all(isinstance(v, str) for v in labels.values()):
        # Medical Segmentation Decathlon spelling: {"0": "background", "1": "anterior"}.
        pairs = [(_as_value(k, source), v) for k, v in labels.items()]
    else:
        pairs = []
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                raise LabelMapError(
                    f"{source}: label {name!r} is a region ({value}); region-based label maps "
                    "are not supported, give one value per label"
                )
            pairs.append((_as_value(value, source), str(name)))
    names: dict[int, str] = {}
    background_names = set()
    for value, name in pairs:
        if value in names or (value == 0 and background_names):
            raise LabelMapError(f"{source}: value {value} is given twice ({name!r} and another name)")
        if value == 0:
            background_names.add(name)
        else:
            names[value] = name
    _check_unique_names(names, source)
    scored = tuple(sorted(names))
    if "evaluate_labels" in data:
        scored = _resolve_subset(data["evaluate_labels"], names, background_names, source)
    return LabelMap(names=names, scored=scored, source=source)


def _resolve_subset(entries, names: dict[int, str], background_names: set[str], source: str) -> tuple[int, ...]:
    if not isinstance(entries, list) or not entries:
        raise LabelMapError(f"{source}: \"evaluate_labels\" must be a non-empty list, got {entries!r}")
    by_name = {name: 0 for name in background_names} | {name: value for value, name in names.items()}
    chosen = []
    for entry in entries:
        if isinstance(entry, str) and entry in by_name:
            value = by_name[entry]
        elif isinstance(entry, str) and entry.strip().lstrip("-").isdigit():
            value = int(entry)
        elif isinstance(entry, int) and not isinstance(entry, bool):
            value = entry
        else:
            raise LabelMapError(
                f"{source}: \"evaluate_labels\" entry {entry!r} is not a label name or value; "
                f"names are {sorted(by_name)}"
            )
        if value == 0:
            raise LabelMapError(f"{source}: \"evaluate_labels\" lists background ({entry!r}); it is never scored")
        if value not in names:
            raise LabelMapError(f"{source}: \"evaluate_labels\" entry {entry!r} is not in \"labels\"")
        chosen.append(value)
    return tuple(sorted(set(chosen)))


def _as_value(raw, source: str) -> int:
    if isinstance(raw, bool):
        raise LabelMapError(f"{source}: label value {raw!r} is not an integer")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw)
    else:
        raise LabelMapError(f"{source}: label value {raw!r} is not an integer")
    if value < 0:
        raise LabelMapError(f"{source}: label value {value} is negative")
    return value


def _check_unique_names(names: dict[int, str], source: str) -> None:
    seen: dict[str, int] = {}
    for value, name in names.items():
        if name in seen:
            raise LabelMapError(f"{source}: name {name!r} is used by values {seen[name]} and {value}")
        seen[name] = value
