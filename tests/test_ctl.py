"""loomctl's pure parts: generic operation arguments and event formatting."""

from __future__ import annotations

import pytest

from loomd.bus.envelope import Event
from loomd.ctl import format_event, parse_op_args
from loomd.errors import LoomdError


@pytest.mark.parametrize(
    ("tokens", "args", "kwargs"),
    [
        ([], [], {}),
        (["lamp"], ["lamp"], {}),
        (["lamp", '{"on": true}'], ["lamp", {"on": True}], {}),
        (["key=lamp", "ns=user"], [], {"key": "lamp", "ns": "user"}),
        (["--ns", "user", "lamp"], ["lamp"], {"ns": "user"}),
        (["--max-tokens=5"], [], {"max_tokens": 5}),
        (['{"key": "lamp", "value": [1, 2]}'], [], {"key": "lamp", "value": [1, 2]}),
        (["21", "a=b=c"], [21], {"a": "b=c"}),
        (["x y"], ["x y"], {}),
    ],
)
def test_operation_arguments(
    tokens: list[str], args: list[object], kwargs: dict[str, object]
) -> None:
    assert parse_op_args(tokens) == (args, kwargs)


@pytest.mark.parametrize(
    ("tokens", "error"), [(["--ns"], "--ns needs a value"), (["{1"], "not JSON")]
)
def test_bad_operation_arguments(tokens: list[str], error: str) -> None:
    with pytest.raises(LoomdError, match=error):
        parse_op_args(tokens)


def test_an_undecodable_body_is_shown_not_raised() -> None:
    ok = Event.create("demo.x", {"a": 1}, sender="s")
    bomb = Event.from_frames(ok.topic_bytes(), ok.header_bytes(), b"\x81" * 5000 + b"\x00")
    line = format_event(bomb)
    assert line.endswith(">") and "demo.x from s: <undecodable body: " in line
    assert format_event(ok).endswith('demo.x from s: {"a": 1}')
