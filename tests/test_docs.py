"""Every relative link and file reference in the docs and docstrings resolves inside the repository, and
none cites an issue number.

Docs: README.md, docs/*.md, bench/**/README.md, plugins/*/README.md. Docstrings: every module, class and
function docstring of the Python files under hsa_core/, app/, kernels/, backbones/, cli/, bench/, plugins/,
examples/ and scripts/.

What counts as a reference: a markdown link ``[text](target)`` (not a URL or an anchor), and a code span
(single or double backticks) that looks like a file path: it holds a ``/`` and ends in a file extension,
or it is a bare ``*.md`` name. A path resolves when it exists relative to the document's folder, to the
repository root, or (docstrings) to the module's package folder; a bare name when a file of that name is
tracked anywhere in the repository. Placeholders (``$OUT/...``, ``<dir>``, ``~``, the folder names of
:data:`PLACEHOLDERS`), absolute paths and git-ignored paths (third-party files that are never committed)
are not references.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("hsa_core", "app", "kernels", "backbones", "cli", "bench", "plugins", "examples", "scripts")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SPAN = re.compile(r"``?([^`\s]+)``?")
FILE = re.compile(r"^[\w.\-*/]+\.(py|md|yaml|yml|json|jsonl|sh|toml|png|txt|log|cfg)$")
#: Folder names the docs use for folders the reader makes (a run directory, a plugin of one's own).
PLACEHOLDERS = ("RUN", "OUT", "DIR", "my_rnn")
ISSUE = re.compile(r"\bissues? #?\d+|#\d+\b(?![\w.])")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).exists()]


TRACKED = _tracked()
NAMES = {p.name for p in TRACKED}


def _docs() -> list[Path]:
    return sorted(p for p in TRACKED if p.suffix == ".md" and (
        p.parent == ROOT or p.parent == ROOT / "docs" or (p.name == "README.md"
        and p.relative_to(ROOT).parts[0] in ("bench", "plugins"))))


def _docstrings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


def _code_files() -> list[Path]:
    return sorted(p for p in TRACKED if p.suffix == ".py" and p.relative_to(ROOT).parts[0] in CODE_DIRS)


def _references(text: str) -> list[str]:
    refs = [m.group(1) for m in LINK.finditer(text)]
    refs = [r for r in refs if not re.match(r"^(\w+:|#|mailto:)", r)]
    for m in SPAN.finditer(text):
        span = m.group(1).rstrip(".,:;)")
        if FILE.match(span) and ("/" in span or span.endswith(".md")):
            refs.append(span)
    refs = [r.split("#")[0] for r in refs if r.split("#")[0] and not re.match(r"^[$<~/]", r)]
    return [r for r in refs if r.split("/")[0] not in PLACEHOLDERS]


def _ignored(ref: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", ref], cwd=ROOT).returncode == 0


def _resolves(ref: str, bases: list[Path]) -> bool:
    if "/" not in ref:
        return ref in NAMES or any(ref == b.name for b in bases)
    if "*" in ref:
        return any(list(b.glob(ref)) for b in bases)
    return any((b / ref).exists() for b in bases) or _ignored(ref)


def _unresolved(text: str, bases: list[Path]) -> list[str]:
    return [r for r in _references(text) if not _resolves(r, bases)]


def test_reference_finder() -> None:
    text = ("see [the guide](docs/architecture.md#top), [web](https://x.org), `bench/results/h200/README.md`, "
            "``naive.py``, `design.md`, `$OUT/h200`, `results.json`, `a b.py`, [up](../x.md), `RUN/a.json`, "
            "`third_party/hsa_pub/hsa_triton.py`")
    assert _references(text) == ["docs/architecture.md", "../x.md", "bench/results/h200/README.md", "design.md",
                                 "third_party/hsa_pub/hsa_triton.py"]
    assert _unresolved(text, [ROOT]) == ["../x.md", "design.md"]
    assert ISSUE.search("as issue 4's bar says") and ISSUE.search("see #12") and not ISSUE.search("a #define")


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_references_resolve(doc: Path) -> None:
    text = doc.read_text()
    assert _unresolved(text, [doc.parent, ROOT]) == []
    assert [m.group(0) for m in ISSUE.finditer(text)] == []


def test_docstring_references_resolve() -> None:
    bad = []
    for path in _code_files():
        bases = [path.parent, ROOT, *path.parents[: len(path.relative_to(ROOT).parts) - 1]]
        for line, doc in _docstrings(path):
            bad += [f"{path.relative_to(ROOT)}:{line}: {r}" for r in _unresolved(doc, bases)]
            bad += [f"{path.relative_to(ROOT)}:{line}: cites {m.group(0)!r}" for m in ISSUE.finditer(doc)]
    assert bad == []


def test_the_scan_covers_the_docs_and_code() -> None:
    names = {str(p.relative_to(ROOT)) for p in _docs()}
    assert {"README.md", "docs/architecture.md", "bench/results/h200/README.md"} <= names
    assert any(p.name == "forward.py" for p in _code_files())


def test_no_tracked_text_cites_an_issue_number() -> None:
    """Comments of scripts, layouts and tests too: a reader of the repository has no issue tracker to
    look the number up in, so a file says what it refers to (a results page, a test) instead."""
    this = Path(__file__).resolve()
    suffixes = {".py", ".sh", ".yaml", ".yml", ".toml", ".md", ".txt"}
    cited = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}"
             for p in TRACKED if p.suffix in suffixes and p.resolve() != this
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             for m in ISSUE.finditer(line)]
    assert cited == []
