"""The JSON body bounds of ``claw_ingress.bodies``, at their edges (the fleet-level 422s are
in test_ingress_hardening.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from claw_ingress.bodies import (
    MAX_DEPTH,
    MAX_NUMBER_DIGITS,
    BodyError,
    loads_bounded,
    nesting_depth,
)


def nested(depth: int) -> bytes:
    return b'{"text": "hi", "x": ' + b"[" * depth + b"]" * depth + b"}"


def test_the_depth_limit_counts_every_level_and_not_brackets_in_strings() -> None:
    assert loads_bounded(nested(MAX_DEPTH - 1))["text"] == "hi"  # the object is one level
    with pytest.raises(BodyError, match="nested more than"):
        loads_bounded(nested(MAX_DEPTH))
    text = "[" * 10 * MAX_DEPTH + '\\"{' * MAX_DEPTH
    assert loads_bounded(json.dumps({"text": text}).encode())["text"] == text
    # Many brackets side by side are not deep.
    wide = json.dumps({"x": [[1]] * 10 * MAX_DEPTH}).encode()
    assert len(loads_bounded(wide)["x"]) == 10 * MAX_DEPTH


# Integers within the body's digit limit (a longer one is refused on its own, MAX_NUMBER_DIGITS).
small_ints = st.integers(-(10**MAX_NUMBER_DIGITS) + 1, 10**MAX_NUMBER_DIGITS - 1)
json_values = st.recursive(
    st.none() | st.booleans() | small_ints | st.text(alphabet='[]{}"\\ab', max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@given(json_values)
def test_nesting_depth_is_the_real_depth(value: object) -> None:
    raw = json.dumps(value).encode()
    assert nesting_depth(raw) == depth_of(value)
    assert loads_bounded(raw) == value  # none of these is deeper than the limit
