from __future__ import annotations

from pixelmirror._memo import Memo


def test_a_memo_answers_what_its_function_does_and_keeps_at_most_its_limit() -> None:
    calls: list[str] = []

    def shout(text: str) -> str:
        calls.append(text)
        return text.upper()

    memo = Memo(shout, limit=2)
    assert [memo["a"], memo["a"], memo["b"], memo["c"], memo["c"]] == ["A", "A", "B", "C", "C"]
    assert dict(memo) == {"a": "A", "b": "B"}  # "c" came past the limit
    assert calls == ["a", "b", "c", "c"]  # kept ones are not computed again, the rest are
