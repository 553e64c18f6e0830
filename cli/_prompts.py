"""The prompts file of ``hsa generate --prompts FILE`` and the results it writes, both JSON Lines.

In: one prompt a line, a JSON string (``"Once upon a time"``) or an object with a string field
``prompt`` and, optionally, an ``id`` that is copied to the result (``{"id": "q7", "prompt": "..."}``).
Blank lines are skipped. Out: one object a prompt, in the order given (:func:`result_record`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsa_app.data.errors import EXIT_USAGE, DataError


@dataclass(frozen=True)
class Prompt:
    """One line of a prompts file: its text, the caller's ``id`` (if any) and its line number."""

    text: str
    id: Any
    line: int


def read_utf8(path: Path, option: str) -> str:
    """The text of the file given to ``option``: a missing file is a usage error (exit 2), text that is not
    UTF-8 a :class:`DataError` naming the byte (exit 1)."""
    if not path.is_file():
        raise DataError(f"{option} {path}: no such file", EXIT_USAGE)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None


def read_prompts(path: Path) -> list[Prompt]:
    """Every prompt of ``path``; bad lines are a :class:`DataError` naming the file, line and what is allowed."""
    prompts = []
    for number, line in enumerate(read_utf8(path, "--prompts").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno}); expected a JSON string "
                            f'or an object like {{"prompt": "..."}}') from None
        if isinstance(value, str):
            prompts.append(Prompt(value, None, number))
        elif isinstance(value, dict) and isinstance(value.get("prompt"), str):
            prompts.append(Prompt(value["prompt"], value.get("id"), number))
        else:
            got = f"an object with fields {sorted(value)}" if isinstance(value, dict) else type(value).__name__
            raise DataError(f"{path}:{number}: expected a JSON string or an object with a string field 'prompt', "
                            f"got {got}")
    if not prompts:
        raise DataError(f'{path}: no prompts (one JSON string or {{"prompt": "..."}} object a line)')
    return prompts


def result_record(index: int, prompt: Prompt, prompt_tokens: int, generated: list[int], text: str,
                  stopped_at_eos: bool) -> dict[str, Any]:
    """One output line: where the prompt was (``index`` from 0, ``line`` from 1), its ``id`` when it had
    one, the token counts (the prompt's with its leading EOS), the text, and whether it ended on EOS."""
    record: dict[str, Any] = {"index": index, "line": prompt.line}
    if prompt.id is not None:
        record["id"] = prompt.id
    record.update(prompt_tokens=prompt_tokens, generated_tokens=len(generated), stopped_at_eos=stopped_at_eos,
                  text=text)
    return record
