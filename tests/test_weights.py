"""The key-table engine that every weight converter uses (segnotes.weights), on plain dicts."""

from __future__ import annotations

import doctest

import pytest

import segnotes.weights
from segnotes.weights import find_fields, rename_keys

# (segnotes, layout A, layout B): a three-column table like segformer's TRANSFORMERS_KEYS
TABLE = (
    ("stages.{i}.attn.kv", "block.{i}.attention.kv", "layers.{i}.kv_proj"),
    ("stages.{i}.attn.k", "block.{i}.attention.k", "layers.{i}.k_proj"),
    ("stages.{i}.norm", "block.{i}.norm", "layers.{i}.norm"),
)


def rename(state_dict, table=TABLE, source=1, target=0, **kwargs):
    return rename_keys(state_dict, table, source=source, target=target, table_name="TABLE", supported="test", **kwargs)


def test_a_row_renames_a_whole_module_and_carries_the_rest_of_the_key():
    state = {"block.0.attention.kv.weight": 1, "block.12.norm.running_mean": 2, "block.3.norm": 3}
    assert rename(state) == {"stages.0.attn.kv.weight": 1, "stages.12.norm.running_mean": 2, "stages.3.norm": 3}
    # a template ends at a dot: attention.k does not match attention.kv, nor block.{i} block.x
    assert rename({"block.0.attention.k.bias": 4}) == {"stages.0.attn.k.bias": 4}
    with pytest.raises(ValueError, match="'block.x.norm.weight'"):
        rename({"block.x.norm.weight": 5})


def test_the_first_row_that_matches_wins():
    specific_first = (("pooling", "convs.4"), ("branches", "convs"))
    assert rename({"convs.4.weight": 1, "convs.2.weight": 2}, specific_first) == {
        "pooling.weight": 1,
        "branches.2.weight": 2,
    }
    general_first = specific_first[::-1]
    assert rename({"convs.4.weight": 1}, general_first) == {"branches.4.weight": 1}


def test_an_unmatched_key_is_named_with_the_table_and_what_is_supported():
    with pytest.raises(ValueError, match=r"no row of TABLE maps key 'block\.0\.mlp\.fc1\.weight'; supported: test"):
        rename({"block.0.norm.weight": 1, "block.0.mlp.fc1.weight": 2})


def test_the_columns_choose_the_layout_in_both_directions():
    ours = {"stages.1.attn.kv.weight": 1, "stages.1.norm.bias": 2}
    a = rename(ours, source=0, target=1)
    b = rename(ours, source=0, target=2)
    assert a == {"block.1.attention.kv.weight": 1, "block.1.norm.bias": 2}
    assert b == {"layers.1.kv_proj.weight": 1, "layers.1.norm.bias": 2}
    assert rename(a, source=1) == rename(b, source=2) == ours
    with pytest.raises(ValueError, match="'layers.1.kv_proj.weight'"):  # layout B's names in layout A's column
        rename(b, source=1)


def test_given_fields_match_only_their_value_and_derived_fields_shift_indices():
    table = (("convs.{pool}", "pooling"), ("convs.{n}", "branches.{n}"))
    state = {"convs.0.weight": 1, "convs.3.weight": 2}
    assert rename(state, table, source=0, target=1, given={"pool": 3}) == {"branches.0.weight": 1, "pooling.weight": 2}
    # counted from 1 in one layout, from 0 in the other; a rule runs only where the target uses its field
    table = (("block{s}.{j}", "stages.{i}.blocks.{j}"), ("head", "head"))
    derived = {"i": lambda f: f["s"] - 1}
    state = {"block1.0.q.weight": 1, "block4.2.q.weight": 2, "head.weight": 3}
    assert rename(state, table, source=0, target=1, derived=derived) == {
        "stages.0.blocks.0.q.weight": 1,
        "stages.3.blocks.2.q.weight": 2,
        "head.weight": 3,
    }


def test_find_fields_reads_the_same_templates():
    keys = ["decoder.blocks.x_0_0.conv1.weight", "decoder.blocks.x_1_3.conv2.bias", "decoder.blocks.0.conv1.weight"]
    assert find_fields(keys, "decoder.blocks.x_{d}_{l}") == [{"d": 0, "l": 0}, {"d": 1, "l": 3}]


def test_the_docstring_examples_run():
    result = doctest.testmod(segnotes.weights)
    assert result.attempted and not result.failed
