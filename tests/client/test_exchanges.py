"""The sans-IO exchanges both HTTP clients drive (bbt.client._base) and the page walk."""

from __future__ import annotations

from typing import Any

import pytest

from bbt.client._base import Batch, Call, Exchange, Steps
from bbt.client.planning import PromptPages
from bbt.errors import NotFoundError, ProtocolError
from bbt.protocol import Health, PromptList, StoredPrompt


def _two_steps() -> Exchange[str]:
    (first,) = yield Batch([Call("GET", "/a", None, Health)])
    try:
        yield Batch([Call("GET", "/b", None, Health)])
    except NotFoundError:
        return f"{first} then gone"
    return "never"


def test_steps_send_answers_and_throw_failures_into_the_exchange() -> None:
    steps = Steps(_two_steps())
    assert steps.batch is not None
    assert steps.batch.calls[0].path == "/a"
    steps.answer(["one"])
    assert steps.batch is not None
    assert steps.batch.calls[0].path == "/b"
    steps.fail(NotFoundError("gone", status_code=404))
    assert steps.batch is None
    assert steps.result == "one then gone"


def test_a_failure_the_exchange_does_not_handle_reaches_the_driver() -> None:
    steps = Steps(_two_steps())
    with pytest.raises(ProtocolError, match="bad"):
        steps.fail(ProtocolError("bad"))


def _page(ids: list[str], cursor: str | None) -> PromptList:
    data: list[Any] = [
        StoredPrompt(
            id=i, model="m", kind="tensor", shape=[1, 1], nbytes=4, sha256="0", created_at=0
        )
        for i in ids
    ]
    return PromptList(data=data, next_cursor=cursor)


def test_prompt_pages_follow_cursors_to_the_end() -> None:
    pages = PromptPages()
    served = {None: _page(["a"], "c1"), "c1": _page(["b"], "c2"), "c2": _page(["c"], None)}
    asked: list[str | None] = []
    got: list[str] = []
    while pages.more():
        asked.append(pages.cursor)
        got += [p.id for p in pages.take(served[pages.cursor])]
    assert asked == [None, "c1", "c2"]
    assert got == ["a", "b", "c"]


def test_prompt_pages_refuse_a_cursor_handed_out_twice_after_its_page() -> None:
    pages = PromptPages()
    got: list[str] = []

    def walk() -> None:
        nonlocal got
        while pages.more():
            got += [p.id for p in pages.take(_page(["x"], "same"))]

    with pytest.raises(ProtocolError, match="does not end"):
        walk()
    assert got == ["x", "x"]  # each page's prompts come before the refusal
