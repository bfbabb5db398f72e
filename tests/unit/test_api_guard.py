"""The admin API guard's JSON nesting check, against the depth of the parsed value."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fedstream_scheduler.api.guard import json_deeper_than

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a', max_size=3), inner,
                                                                   max_size=3),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(values, st.integers(min_value=0, max_value=8))
def test_the_check_agrees_with_the_parsed_depth(value, limit):
    body = json.dumps(value).encode()

    assert json_deeper_than(body, limit) == (depth(value) > limit)


def test_brackets_inside_strings_do_not_count():
    body = json.dumps({"a": "[[[[{{{{" * 100, "b": ['\\"[[[']}).encode()

    assert not json_deeper_than(body, 2)


def test_a_deep_body_is_found_without_parsing_it():
    body = b"[" * 1_000_000 + b"]" * 1_000_000

    assert json_deeper_than(body, 32) and not json_deeper_than(b"[" * 32 + b"]" * 32, 32)
