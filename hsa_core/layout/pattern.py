"""The layer-pattern mini-language: ``"M*24 | (H M*8)*3"``.

Grammar (whitespace separates items; columns in messages are 1-based)::

    pattern := item*
    item    := NAME repeat? | "(" item+ ")" repeat? | "|"
    repeat  := "*" INT          (INT >= 1; spaces around "*" are allowed)

``NAME`` is a symbol (or a kind name) made of letters, digits, ``_`` and ``-``, starting with a letter
or ``_``. ``|`` is only a visual separator. A pattern expands to at most
:data:`~hsa_core.limits.MAX_LAYERS` layers, checked before each repeat is expanded (``"M*99999999"``
costs nothing). The parser returns the flat list of names with the column
each came from, so that the caller can report an unknown symbol where it was written.
"""

from __future__ import annotations

from ..errors import SpecError, truncate
from ..limits import MAX_LAYERS

__all__ = ["expand_pattern"]

#: Deepest nesting of ``(...)`` groups (the parser recurses once per level).
MAX_DEPTH = 32


def _is_name_start(c: str) -> bool:
    return c.isalpha() or c == "_"


def _is_name_char(c: str) -> bool:
    return c.isalnum() or c in "_-"


class _Parser:
    def __init__(self, text: str, path: str, limit: int) -> None:
        self.text = text
        self.path = path
        self.pos = 0
        self.limit = limit

    def error(self, message: str, pos: int | None = None) -> SpecError:
        col = (self.pos if pos is None else pos) + 1
        return SpecError(self.path, f"{message} at column {col} of {truncate(repr(self.text), 80)}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def repeat(self) -> int:
        """An optional ``*n`` after an item (1 when absent)."""
        save = self.pos
        self.skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] != "*":
            self.pos = save
            return 1
        star = self.pos
        self.pos += 1
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a repeat count after '*'", star)
        digits = self.text[start:self.pos].lstrip("0") or "0"
        if len(digits) > len(str(self.limit)):  # never convert a 5,000-digit number
            raise self.error(f"repeat count {digits[:12]}{'...' if len(digits) > 12 else ''} is larger than "
                             f"the limit of {self.limit:,} layers", start)
        count = int(digits)
        if count < 1:
            raise self.error(f"repeat count must be >= 1, got {count}", start)
        return count

    def grow(self, out: list[tuple[str, int]], unit: list[tuple[str, int]], count: int, at: int) -> None:
        """``out += unit * count``, refused when the pattern would exceed the layer limit."""
        if len(out) + len(unit) * count > self.limit:
            raise self.error(f"the pattern expands to more than {self.limit:,} layers (the limit)", at)
        out.extend(unit * count)

    def items(self, depth: int, open_pos: int | None) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        while True:
            self.skip_ws()
            if self.pos >= len(self.text):
                if depth:
                    assert open_pos is not None
                    raise self.error("unbalanced '('", open_pos)
                return out
            c = self.text[self.pos]
            if c == "|":
                self.pos += 1
            elif c == "(":
                start = self.pos
                if depth >= MAX_DEPTH:
                    raise self.error(f"groups nested more than {MAX_DEPTH} deep")
                self.pos += 1
                inner = self.items(depth + 1, start)
                if not inner:
                    raise self.error("empty group '()'", start)
                self.grow(out, inner, self.repeat(), start)
            elif c == ")":
                if not depth:
                    raise self.error("unbalanced ')'")
                self.pos += 1
                return out
            elif _is_name_start(c):
                start = self.pos
                while self.pos < len(self.text) and _is_name_char(self.text[self.pos]):
                    self.pos += 1
                name = self.text[start:self.pos]
                self.grow(out, [(name, start + 1)], self.repeat(), start)
            elif c == "*":
                raise self.error("'*' must follow a symbol or a ')'")
            else:
                raise self.error(f"unexpected character {c!r}")


def expand_pattern(text: str, path: str = "layers", limit: int = MAX_LAYERS) -> list[tuple[str, int]]:
    """Expand a pattern into ``[(name, column), ...]``, one entry per layer.

    Args:
        limit: most layers the expansion may have (checked before each repeat is expanded).

    Raises:
        SpecError: at ``path`` for unbalanced parentheses, bad repeat counts, stray characters, more
            than ``limit`` layers or an empty pattern; the message names the 1-based column.
    """
    if len(text) > 100 * limit:
        raise SpecError(path, f"the pattern is {len(text):,} characters long; a pattern of at most {limit:,} "
                              "layers is far shorter")
    parser = _Parser(text, path, limit)
    out = parser.items(0, None)
    if not out:
        raise SpecError(path, "the pattern has no layers")
    return out
