from __future__ import annotations

import pytest

from hsa_core.errors import SpecError
from hsa_core.layout import expand_pattern


def names(text: str) -> list[str]:
    return [n for n, _ in expand_pattern(text)]


def test_ramba_pattern() -> None:
    out = names("M*24 | (H M*8)*3")
    assert len(out) == 51
    assert out[:24] == ["M"] * 24
    assert [i for i, n in enumerate(out) if n == "H"] == [24, 33, 42]


@pytest.mark.parametrize(("text", "expected"), [
    ("A B C", ["A", "B", "C"]),
    ("A * 2 B", ["A", "A", "B"]),
    ("(A (B C)*2)*2", ["A", "B", "C", "B", "C"] * 2),
    ("(A)", ["A"]),
    ("swa_1 gla-2", ["swa_1", "gla-2"]),
    ("A|B", ["A", "B"]),
])
def test_expansions(text: str, expected: list[str]) -> None:
    assert names(text) == expected


def test_columns_point_at_symbols() -> None:
    assert expand_pattern("M*2 (H X)") == [("M", 1), ("M", 1), ("H", 6), ("X", 8)]


@pytest.mark.parametrize(("text", "message"), [
    ("M*24 | (H M*8", "unbalanced '(' at column 8"),
    ("M*24 )", "unbalanced ')' at column 6"),
    ("M*", "expected a repeat count after '*' at column 2"),
    ("M*0", "repeat count must be >= 1, got 0 at column 3"),
    ("*3", "'*' must follow a symbol or a ')' at column 1"),
    ("M ()*2", "empty group '()' at column 3"),
    ("M, H", "unexpected character ',' at column 2"),
    ("  | ", "the pattern has no layers"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        expand_pattern(text)
    assert info.value.path == "layers"
    assert message in info.value.message
