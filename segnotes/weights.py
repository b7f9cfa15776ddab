"""Key tables: one way to rename a state dict's keys, for every weight converter.

A checkpoint written by another library holds the same tensors as a segnotes model under
other names. segnotes converts them with *key tables*: plain data, one row per module, one
column per layout, read by one function, :func:`rename_keys`. Each table lives next to the
model it describes (``SMP_KEYS`` in :mod:`segnotes.unet` and :mod:`segnotes.deeplab`,
``ORIGINAL_KEYS`` in :mod:`segnotes.mit`, ``TRANSFORMERS_KEYS`` and ``DECODER_KEYS`` in
:mod:`segnotes.segformer`), where a chapter can display it.

Every table uses one template syntax:

* ``{name}`` matches a whole number, every other character matches itself: the source
  template ``block{s}.{j}.attn`` matches ``block1.0.attn`` with ``s=1, j=0``, and the target
  template ``stages.{i}.blocks.{j}.attn`` writes them back.
* A template names a module (or a tensor). It matches a key that equals it or continues it
  after a dot, and that rest of the key (``.q.weight``, ``.1.running_mean``) is carried over
  unchanged: below a renamed module both layouts agree, so one row covers all its tensors.
* Rows are tried in order and the first that matches wins, so a specific row goes before a
  general one (DeepLab's pooling branch before the other ASPP branches).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

__all__ = ["KeyTable", "rename_keys", "find_fields"]

KeyTable = Sequence[Sequence[str]]  # rows of templates, one column per layout
T = TypeVar("T")  # the state dict's values: tensors, or anything else (the examples use numbers)

_FIELD = re.compile(r"\{(\w+)\}")


def _pattern(template: str, given: Mapping[str, int]) -> re.Pattern[str]:
    """A template as a regex: ``{name}`` a captured whole number (only its value if given), the rest literal."""
    regex = ""
    for k, part in enumerate(_FIELD.split(template)):  # literal, name, literal, name, ..., literal
        if k % 2 == 0:
            regex += re.escape(part)
        elif part in given:  # a given field matches only its value
            regex += re.escape(str(given[part]))
        else:  # a field: a whole number, captured by name
            regex += rf"(?P<{part}>\d+)"
    return re.compile(regex + r"(?=\.|$)")  # a whole module: the match ends at a dot or at the key's end


def find_fields(keys: Iterable[str], template: str) -> list[dict[str, int]]:
    """The fields of every key that ``template`` matches, in order.

    For converters whose table depends on the whole state dict, e.g. the number of ASPP branches.

    Example:
        >>> find_fields(["convs.0.weight", "convs.3.bias", "project.weight"], "convs.{n}")
        [{'n': 0}, {'n': 3}]
    """
    pattern = _pattern(template, {})
    return [{k: int(v) for k, v in m.groupdict().items()} for key in keys if (m := pattern.match(key))]


def rename_keys(
    state_dict: Mapping[str, T],
    table: KeyTable,
    *,
    source: int,
    target: int,
    table_name: str,
    supported: str,
    given: Mapping[str, int] | None = None,
    derived: Mapping[str, Callable[[dict[str, int]], int]] | None = None,
) -> dict[str, T]:
    """Rename every key from column ``source`` of ``table`` to column ``target``, through the first row that matches.

    Args:
        state_dict: the tensors under their names in the source layout.
        table: rows of templates (see the module docstring for the syntax).
        source: the column that the keys are matched against.
        target: the column that writes the new keys.
        table_name: the table's name, for the error message.
        supported: what the converter accepts, for the error message.
        given: fields whose value the caller knows: a source template matches only that value
            (DeepLab's ``{pool}``, the index of SMP's last ASPP branch).
        derived: fields the target computes from the matched ones, e.g. ``{"i": lambda f: f["s"] - 1}``
            when one layout counts from 1 and the other from 0; a rule runs only for the rows whose
            target template uses its field.

    Returns:
        A new dict with the same values under the target layout's names, in the same order.

    Raises:
        ValueError: a key that no row matches, named with ``table_name`` and ``supported``.
            Converting means every key has a meaning: a key left over is a layout the table
            does not describe, better reported here than as a missing key after loading.

    Example:
        >>> table = [
        ...     ("patch_embed{s}", "stages.{i}.patch_embed"),
        ...     ("block{s}.{j}", "stages.{i}.blocks.{j}"),
        ... ]
        >>> rename_keys(
        ...     {"patch_embed1.proj.weight": 1, "block4.0.attn.q.bias": 2},
        ...     table, source=0, target=1, table_name="table", supported="MiT keys",
        ...     derived={"i": lambda f: f["s"] - 1},
        ... )
        {'stages.0.patch_embed.proj.weight': 1, 'stages.3.blocks.0.attn.q.bias': 2}
        >>> try:
        ...     rename_keys({"head.weight": 3}, table, source=0, target=1,
        ...                 table_name="table", supported="MiT keys")
        ... except ValueError as error:
        ...     print(error)
        no row of table maps key 'head.weight'; supported: MiT keys
    """
    given, derived = given or {}, derived or {}
    rows = [(_pattern(row[source], given), row[target]) for row in table]
    out = {}
    for key, value in state_dict.items():
        for pattern, template in rows:
            if match := pattern.match(key):
                fields = {**given, **{k: int(v) for k, v in match.groupdict().items()}}
                # only the rules this row's target uses: a rule may read fields that other rows lack
                fields |= {name: rule(fields) for name, rule in derived.items() if f"{{{name}}}" in template}
                out[template.format(**fields) + key[match.end() :]] = value  # the rest of the key, unchanged
                break
        else:
            raise ValueError(f"no row of {table_name} maps key {key!r}; supported: {supported}")
    return out
