"""Label maps: which label values exist, what they are called, and which are scored.

Two spellings are accepted (the format agreed with the converters, see README):

* a JSON file in nnU-Net ``dataset.json`` style, ``{"labels": {"background": 0,
  "aorta": 1, ...}}``, with an optional ``"evaluate_labels": ["aorta", 4, ...]`` (names or
  values) naming the subset to score. The Medical Segmentation Decathlon spelling,
  ``{"labels": {"0": "background", "1": "anterior"}}``, is read as well;
* an inline string ``"1=aorta,2=gallbladder"`` (``VALUE=NAME``; ``NAME=VALUE`` works too).

Region-based maps (nnU-Net v2's region-based training) score unions of label values:

* in ``dataset.json``, an entry that lists values is a region, ``{"labels":
  {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor":
  [3]}, "regions_class_order": [1, 2, 3]}``;
* inline, ``+`` joins the values of a region: ``"whole_tumor=1+2+3,tumor_core=2+3,
  enhancing=3"``.

As in nnU-Net, a map in which any entry lists more than one value is region-based, and
then every entry is a region (``"enhancing_tumor": 3`` is the region of the single value
3), scored in the order given. A region is scored on the mask of every voxel whose value
is one of its values, in prediction and ground truth alike; the label images hold plain
label values. ``"evaluate_labels"`` then names the regions to score.
``"regions_class_order"`` (the value nnU-Net writes where each region is predicted) is
checked: one value per region, each one of its region's values, or the predictions
nnU-Net writes would not count as that region.

Background (0) is always a valid value and never scored. Every other value in an image
must appear in the map, as a label or in a region; :mod:`medattn.evaluation.api` reports
the ones that do not.

nnU-Net v2's ignore label (sparse annotation) is the entry named exactly ``"ignore"``, in
every spelling: ``{"labels": {"background": 0, "liver": 1, "ignore": 2}}``, the MSD and
``{value: name}`` spellings ``{"2": "ignore"}``, inline ``"1=liver,2=ignore"`` or
``"liver=1,ignore=2"``. It marks the ground-truth voxels that nobody annotated:

* it is one value (a list of several is an error, as nnU-Net allows no ignore region), and
  it must be higher than every label and region value (nnU-Net asserts it). nnU-Net
  demands exactly the highest value + 1 because its labels are consecutive; medattn maps
  may skip values, so only "highest" is checked;
* it is never scored: ``"evaluate_labels"`` may not name it, and it is in no region;
* it is a valid value of a ground-truth image, and an error in a prediction, since
  nnU-Net never predicts it (:attr:`LabelMap.prediction_values` leaves it out);
* the voxels where the ground truth holds it are left out of every metric, see
  :mod:`medattn.evaluation.metrics`.

The name ``"ignore"`` is therefore never the name of a scored label or region.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence


class LabelMapError(ValueError):
    """A label map is malformed; the message names its source and the problem."""


@dataclass(frozen=True)
class Region:
    """A scored union of label values, as in nnU-Net's region-based training.

    Attributes:
        name: what the reports call the region.
        values: the label values (> 0) whose union is the region; stored ascending.

    Raises:
        LabelMapError: for an empty name, no values, a value that is not an integer > 0,
            or a value listed twice.
    """

    name: str
    values: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise LabelMapError(f"a region needs a non-empty name, got {self.name!r}")
        try:
            values = tuple(self.values)
        except TypeError:
            raise LabelMapError(
                f"region {self.name!r}: values must be a list of integers, got {self.values!r}"
            ) from None
        if not values:
            raise LabelMapError(f"region {self.name!r} lists no values")
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LabelMapError(f"region {self.name!r}: values must be integers > 0, got {value!r}")
            if value == 0:
                raise LabelMapError(
                    f"region {self.name!r} lists 0; background is never part of a scored region"
                )
        repeated = sorted(value for value, count in Counter(values).items() if count > 1)
        if repeated:
            raise LabelMapError(f"region {self.name!r} lists value {repeated[0]} more than once")
        # Ascending, so that the same union always has the same key.
        object.__setattr__(self, "values", tuple(sorted(values)))

    @property
    def key(self) -> str:
        """The values joined by ``+`` (``"1+2+3"``): the region's entry in the ``label`` column."""
        return "+".join(str(value) for value in self.values)


#: A scored entry of a label map: a label value or a :class:`Region`.
ScoredEntry = int | Region

#: The entry name that makes a value nnU-Net's ignore label (``LabelManager.ignore_label``).
IGNORE_NAME = "ignore"


@dataclass(frozen=True)
class LabelMap:
    """Names of the foreground label values and regions, and the subset that is scored.

    Attributes:
        names: every named foreground label value (> 0) mapped to its name; empty for a
            region-based map, whose values are named by their regions.
        scored: the entries that are evaluated: label values (ascending; a subset of
            ``names``) or regions (in the order of the map; a subset of ``regions``).
        source: where the map came from (a file path or "inline"), for messages.
        regions: every region of a region-based map, in the order given; empty otherwise.
        ignore_label: nnU-Net's ignore label (unannotated ground-truth voxels, left out of
            every metric), or None. Never scored; valid in the ground truth only.

    Raises:
        LabelMapError: for a malformed entry, a scored entry not in the map, or an ignore
            label that is not an integer > 0 above every label and region value.
    """

    names: dict[int, str]
    scored: tuple[ScoredEntry, ...]
    source: str = "inline"
    regions: tuple[Region, ...] = ()
    ignore_label: int | None = None

    def __post_init__(self):
        for value, name in self.names.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LabelMapError(f"{self.source}: label values must be integers > 0, got {value!r}")
            if not isinstance(name, str) or not name:
                raise LabelMapError(f"{self.source}: label {value} needs a non-empty name, got {name!r}")
        self._check_regions()
        self._check_scored()
        self._check_ignore_label()

    def _check_regions(self) -> None:
        seen_names = {name: str(value) for value, name in self.names.items()}
        seen_keys: dict[str, str] = {}
        for region in self.regions:
            if not isinstance(region, Region):
                raise LabelMapError(f"{self.source}: regions must be Region objects, got {region!r}")
            if region.name in seen_names:
                raise LabelMapError(
                    f"{self.source}: name {region.name!r} is used by {seen_names[region.name]} and {region.key}"
                )
            if region.key in seen_keys:
                raise LabelMapError(
                    f"{self.source}: regions {seen_keys[region.key]!r} and {region.name!r} are both {region.key}"
                )
            seen_names[region.name] = region.key
            seen_keys[region.key] = region.name

    def _check_scored(self) -> None:
        labels = [entry for entry in self.scored if not isinstance(entry, Region)]
        regions = [entry for entry in self.scored if isinstance(entry, Region)]
        unknown = sorted(set(labels) - set(self.names))
        if unknown:
            raise LabelMapError(f"{self.source}: scored labels {unknown} are not in the label map")
        unknown_regions = [region.name for region in regions if region not in self.regions]
        if unknown_regions:
            raise LabelMapError(f"{self.source}: scored regions {unknown_regions} are not in the label map")
        if not self.scored:
            raise LabelMapError(f"{self.source}: no label to score")

    def _check_ignore_label(self) -> None:
        named = [name for name in self.names.values() if name == IGNORE_NAME]
        named += [region.name for region in self.regions if region.name == IGNORE_NAME]
        if named:
            # parse_label_map always turns this name into the ignore label; a scored entry
            # of that name would mean something else in nnU-Net.
            raise LabelMapError(
                f"{self.source}: the name {IGNORE_NAME!r} is reserved for nnU-Net's ignore label, "
                "which is never scored; pass its value as ignore_label"
            )
        ignore = self.ignore_label
        if ignore is None:
            return
        if not isinstance(ignore, int) or isinstance(ignore, bool) or ignore <= 0:
            raise LabelMapError(f"{self.source}: the ignore label must be an integer > 0, got {ignore!r}")
        highest = self._highest_scorable_value()
        if highest is not None and highest[0] >= ignore:
            raise LabelMapError(
                f"{self.source}: ignore label {ignore} must be the highest label value, as nnU-Net "
                f"requires, but {highest[1]} has value {highest[0]}"
            )

    def _highest_scorable_value(self) -> tuple[int, str] | None:
        """The highest label or region value and what holds it, for messages; None if none."""
        holders = [(value, f"label {name!r}") for value, name in self.names.items()]
        holders += [(value, f"region {region.name!r}") for region in self.regions for value in region.values]
        return max(holders, key=lambda holder: holder[0], default=None)

    @property
    def has_regions(self) -> bool:
        """Whether the map is region-based (nnU-Net's ``has_regions``)."""
        return bool(self.regions)

    @property
    def valid_values(self) -> frozenset[int]:
        """Every value a ground-truth image may contain: background 0, the labels, the
        regions' values and the ignore label."""
        ignore = {self.ignore_label} if self.ignore_label is not None else set()
        return self.prediction_values | ignore

    @property
    def prediction_values(self) -> frozenset[int]:
        """Every value a prediction may contain: :attr:`valid_values` without the ignore
        label, which nnU-Net never predicts."""
        return frozenset(self.names) | {value for region in self.regions for value in region.values} | {0}

    def name_of(self, entry: ScoredEntry) -> str:
        """The name of a label value or a region."""
        return entry.name if isinstance(entry, Region) else self.names[entry]


def label_column_value(entry: ScoredEntry) -> int | str:
    """What the ``label`` column of the tables holds for ``entry``: the value of a label,
    the :attr:`Region.key` (``"1+2+3"``) of a region."""
    return entry.key if isinstance(entry, Region) else entry


def default_name(value: int) -> str:
    """Name given to a label found in the data when no label map is supplied."""
    return f"label_{value}"


def parse_label_map(spec: "str | os.PathLike | Mapping | LabelMap") -> LabelMap:
    """Build a :class:`LabelMap` from any accepted spelling.

    Args:
        spec: a :class:`LabelMap` (returned as is); a mapping, either ``{value: name}`` or
            the ``"labels"`` object of a ``dataset.json`` (``{name: value or [values]}``);
            a path to a ``dataset.json``-style file; or an inline string
            ``"1=aorta,2=gallbladder"`` or ``"whole_tumor=1+2+3,tumor_core=2+3"``.

    Returns:
        The label map; without ``evaluate_labels`` every foreground label or region is
        scored. An entry named ``"ignore"`` (``"2=ignore"``, ``{"ignore": 2}``,
        ``{2: "ignore"}``) becomes :attr:`LabelMap.ignore_label`, never a scored label.

    Raises:
        LabelMapError: if the file is missing or malformed, a value or name repeats, a
            region is malformed (no values, background, the same values as another region),
            or the ignore label is malformed (several values, not the highest value, given
            twice, named by ``evaluate_labels``).
    """
    if isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, Mapping):
        return _build_label_map(_entries_of_labels_object(spec, "inline"), "inline")
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


# An entry as spelled, before it becomes a label, a region or the background: its name and values.
_Entry = tuple[str, tuple[int, ...]]

# Stands for an absent "evaluate_labels" (score everything); a null in the JSON is an error.
_EVERYTHING = object()


def _parse_inline(text: str) -> LabelMap:
    source = "inline label map"
    entries = []
    for item in text.split(","):
        item = item.strip()
        if item:
            entries.append(_inline_entry(item, source))
    return _build_label_map(entries, source)


def _inline_entry(item: str, source: str) -> _Entry:
    """``VALUE=NAME`` names one value; ``NAME=VALUE`` too, and ``NAME=VALUE+VALUE...`` a region."""
    left, sep, right = (part.strip() for part in item.partition("="))
    if not sep or not left or not right:
        raise LabelMapError(
            f"{source}: {item!r} is not of the form VALUE=NAME or NAME=VALUE[+VALUE...]"
        )
    if _looks_like_integer(left):
        return right, (_as_value(left, source),)
    return left, tuple(_as_value(value.strip(), source) for value in right.split("+"))


def _parse_json(path: Path) -> LabelMap:
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_JsonObject.from_pairs)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LabelMapError(f"{source}: cannot read label map JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise LabelMapError(f"{source}: expected a JSON object with a \"labels\" object")
    labels = data["labels"]
    if labels.repeated_keys:
        # json.loads would keep only the last one and silently drop the others.
        raise LabelMapError(f"{source}: \"labels\" gives name {labels.repeated_keys[0]!r} more than once")
    label_map = _build_label_map(
        _entries_of_labels_object(labels, source), source, data.get("evaluate_labels", _EVERYTHING)
    )
    if label_map.has_regions and "regions_class_order" in data:
        _check_regions_class_order(data["regions_class_order"], label_map.regions, source)
    return label_map


class _JsonObject(dict):
    """A JSON object that remembers the keys it held more than once."""

    repeated_keys: list[str]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, object]]) -> "_JsonObject":
        obj = cls(pairs)
        obj.repeated_keys = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        return obj


def _entries_of_labels_object(labels: Mapping, source: str) -> list[_Entry]:
    if labels and all(isinstance(v, str) for v in labels.values()):
        # Medical Segmentation Decathlon spelling, {"0": "background", "1": "anterior"},
        # and the {value: name} mapping of the Python API.
        return [(name, (_as_value(value, source),)) for value, name in labels.items()]
    entries = []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            entries.append((str(name), tuple(_as_value(v, source) for v in value)))
        else:
            entries.append((str(name), (_as_value(value, source),)))
    return entries


def _build_label_map(entries: Sequence[_Entry], source: str, evaluate=_EVERYTHING) -> LabelMap:
    """A label map from the entries as spelled: region-based if any lists several values."""
    for name, values in entries:
        if not values:
            raise LabelMapError(f"{source}: {name!r} lists no values")
    ignore, entries = _split_ignore(entries, source)
    if evaluate is not _EVERYTHING:
        _check_evaluate_labels_skip_ignore(evaluate, ignore, source)
    background_names, foreground = _split_background(entries, source)
    if any(len(values) > 1 for _, values in foreground):
        regions = tuple(_region(name, values, source) for name, values in foreground)
        scored = regions if evaluate is _EVERYTHING else _resolve_region_subset(evaluate, regions, source)
        return LabelMap(names={}, scored=scored, source=source, regions=regions, ignore_label=ignore)
    names: dict[int, str] = {}
    for name, (value,) in foreground:
        if value in names:
            raise LabelMapError(f"{source}: value {value} is given twice ({names[value]!r} and {name!r})")
        names[value] = name
    _check_unique_names(names, source)
    scored = tuple(sorted(names))
    if evaluate is not _EVERYTHING:
        scored = _resolve_subset(evaluate, names, background_names, source)
    return LabelMap(names=names, scored=scored, source=source, ignore_label=ignore)


def _split_ignore(entries: Iterable[_Entry], source: str) -> tuple[int | None, list[_Entry]]:
    """The ignore label's value (None without one) and the other entries.

    Split off before anything else, so that the ignore entry never makes a map
    region-based, never becomes a label and is never taken for background.
    """
    ignore = None
    rest = []
    for name, values in entries:
        if name != IGNORE_NAME:
            rest.append((name, values))
            continue
        if ignore is not None:
            raise LabelMapError(f"{source}: the ignore label is given twice ({ignore} and {_key(values)})")
        if len(values) != 1:
            raise LabelMapError(
                f"{source}: the ignore label must be one value, not a region, got {_key(values)}"
            )
        ignore = values[0]
    return ignore, rest


def _key(values: tuple[int, ...]) -> str:
    return "+".join(str(value) for value in values)


def _check_evaluate_labels_skip_ignore(entries, ignore: int | None, source: str) -> None:
    """``evaluate_labels`` may not name the ignore label, by name or value: it is never scored."""
    if ignore is None or not isinstance(entries, list):
        return  # a malformed list is reported by the subset resolution
    for entry in entries:
        named = entry == IGNORE_NAME
        valued = not isinstance(entry, bool) and (
            entry == ignore or (isinstance(entry, str) and _looks_like_integer(entry) and int(entry) == ignore)
        )
        if named or valued:
            raise LabelMapError(
                f"{source}: \"evaluate_labels\" lists the ignore label ({entry!r}, value {ignore}); "
                "it marks unannotated voxels and is never scored"
            )


def _split_background(entries: Iterable[_Entry], source: str) -> tuple[set[str], list[_Entry]]:
    """The background's name(s) and the other entries; background is the entry valued 0 alone."""
    background_names: set[str] = set()
    foreground = []
    for name, values in entries:
        if values == (0,):
            if background_names:
                raise LabelMapError(f"{source}: value 0 is given twice ({name!r} and another name)")
            background_names.add(name)
        else:
            foreground.append((name, values))
    return background_names, foreground


def _region(name: str, values: tuple[int, ...], source: str) -> Region:
    try:
        return Region(name, values)
    except LabelMapError as err:
        raise LabelMapError(f"{source}: {err}") from None


def _resolve_subset(entries, names: dict[int, str], background_names: set[str], source: str) -> tuple[int, ...]:
    _check_evaluate_labels_is_a_list(entries, source)
    by_name = {name: 0 for name in background_names} | {name: value for value, name in names.items()}
    chosen = []
    for entry in entries:
        if isinstance(entry, str) and entry in by_name:
            value = by_name[entry]
        elif isinstance(entry, str) and _looks_like_integer(entry):
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


def _resolve_region_subset(entries, regions: tuple[Region, ...], source: str) -> tuple[Region, ...]:
    """The regions ``evaluate_labels`` names, in the order of the map."""
    _check_evaluate_labels_is_a_list(entries, source)
    by_name = {region.name: region for region in regions}
    for entry in entries:
        if not isinstance(entry, str) or entry not in by_name:
            raise LabelMapError(
                f"{source}: \"evaluate_labels\" entry {entry!r} is not a region name; names are {sorted(by_name)}"
            )
    return tuple(region for region in regions if region.name in entries)


def _check_evaluate_labels_is_a_list(entries, source: str) -> None:
    if not isinstance(entries, list) or not entries:
        raise LabelMapError(f"{source}: \"evaluate_labels\" must be a non-empty list, got {entries!r}")


def _check_regions_class_order(order, regions: tuple[Region, ...], source: str) -> None:
    """nnU-Net writes ``order[i]`` where region ``i`` is predicted (later regions on top),
    so each value must belong to its region for the written prediction to count as it."""
    if not isinstance(order, list) or len(order) != len(regions):
        raise LabelMapError(
            f"{source}: \"regions_class_order\" must list one value per region ({len(regions)}), got {order!r}"
        )
    for raw, region in zip(order, regions):
        value = _as_value(raw, source)
        if value not in region.values:
            raise LabelMapError(
                f"{source}: \"regions_class_order\" gives {value} for region {region.name!r} ({region.key}); "
                "it must be one of the region's values, or predictions written by nnU-Net would not "
                "count as that region"
            )


def _looks_like_integer(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _as_value(raw, source: str) -> int:
    if isinstance(raw, bool):
        raise LabelMapError(f"{source}: label value {raw!r} is not an integer")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and _looks_like_integer(raw):
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
