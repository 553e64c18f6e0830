#!/usr/bin/env python3
"""Build a real-text corpus offline, as a folder of UTF-8 text files (one file = one document) for
``hsa data prepare``.

Two sources, both available without internet access beyond Debian's package archive:

* **English technical prose**: the Linux kernel documentation from Debian's ``linux-doc-<version>``
  package (``apt-get download linux-doc-6.1`` fetches the .deb, ~37 MB; see ``fetch_linux_doc.sh``).
  The reStructuredText sources under ``Documentation/`` (but ``translations/``) are grouped into one
  document per top-level topic (``networking``, ``filesystems``, ``admin-guide``, ...), files in
  sorted order, each after a ``==> path <==`` header. Several topics are over 256K tokens.
* **Repository-level source code**: every Python distribution installed in the given site-packages
  folders (default: this interpreter's), one document per distribution: all its ``.py`` files in
  sorted order, each after a ``# ==> path <==`` header; plus the standard library as one document
  (``--stdlib``). Large projects (torch, sympy, pandas, the standard library) are millions of tokens.

Output: ``OUT/linux-doc/<topic>.txt``, ``OUT/python/<distribution>.txt``, and ``OUT/corpus.json`` (one
entry per document: source, bytes, files). Give ``hsa data prepare`` the two folders, not ``OUT``
itself, so that ``corpus.json`` is not read as a document.

The output is deterministic for the same .deb and the same installed packages. Recipe::

    bash bench/data/fetch_linux_doc.sh                         # -> bench/data/cache/linux-doc-6.1_*.deb
    python bench/data/build_corpus.py --deb bench/data/cache/linux-doc-6.1_*.deb --stdlib --out corpus
    hsa data prepare corpus/linux-doc corpus/python --out data/realtext --tokenizer bpe:32000 \\
        --val-fraction 0.05 --workers 16
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import lzma
import os
import site
import sys
import sysconfig
import tarfile
from collections import defaultdict
from pathlib import Path

DOC_ROOT = "usr/share/doc/"  # .../linux-doc-<version>/Documentation/<topic>/...
PROSE_SUFFIXES = (".rst", ".rst.gz", ".txt", ".txt.gz")
MAX_FILE_BYTES = 4 << 20  # generated or vendored giants (a 20 MB table) are left out


def read_ar(path: Path) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (a .deb is one): ``name -> bytes``."""
    data = path.read_bytes()
    if data[:8] != b"!<arch>\n":
        raise SystemExit(f"error: {path}: not a .deb (ar) archive")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def deb_documentation(deb: Path) -> dict[str, str]:
    """``relative path under Documentation/ -> text`` of the prose files in a linux-doc .deb."""
    members = read_ar(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise SystemExit(f"error: {deb}: no data.tar.* member")
    raw = members[name]
    if name.endswith(".zst"):
        raise SystemExit(f"error: {deb}: zstd-compressed data; extract it with dpkg-deb -x and pass --doc-dir")
    if name.endswith(".xz"):
        raw = lzma.decompress(raw)
    elif name.endswith(".gz"):
        raw = gzip.decompress(raw)
    texts: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            p = member.name.lstrip("./")
            if not member.isfile() or "/Documentation/" not in p or not p.startswith(DOC_ROOT):
                continue
            if not p.endswith(PROSE_SUFFIXES):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            body = fh.read()
            if p.endswith(".gz"):
                body = gzip.decompress(body)
            rel = p.split("/Documentation/", 1)[1].removesuffix(".gz")
            texts[rel] = body.decode("utf-8", errors="replace")
    if not texts:
        raise SystemExit(f"error: {deb}: no Documentation/*.rst or *.txt files (is it a linux-doc package?)")
    return texts


def dir_documentation(root: Path) -> dict[str, str]:
    """The same from an extracted ``Documentation`` folder."""
    texts = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name.endswith(PROSE_SUFFIXES):
            body = p.read_bytes()
            if p.name.endswith(".gz"):
                body = gzip.decompress(body)
            texts[p.relative_to(root).as_posix().removesuffix(".gz")] = body.decode("utf-8", errors="replace")
    return texts


def group_by_topic(texts: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for rel in sorted(texts):
        topic = rel.split("/", 1)[0] if "/" in rel else "index"
        groups[topic].append((rel, texts[rel]))
    return groups


def python_projects(site_dirs: list[Path]) -> dict[str, list[Path]]:
    """``distribution name -> sorted .py files`` of every distribution installed in ``site_dirs``."""
    from importlib import metadata

    projects: dict[str, list[Path]] = {}
    for d in site_dirs:
        if not d.is_dir():
            continue
        for dist in metadata.distributions(path=[str(d)]):
            name = (dist.metadata["Name"] or "").strip().lower().replace("_", "-")
            if not name or name in projects:
                continue
            files = sorted({(d / str(f)).resolve() for f in (dist.files or []) if str(f).endswith(".py")})
            files = [f for f in files if f.is_file() and f.stat().st_size <= MAX_FILE_BYTES]
            if files:
                projects[name] = files
    return projects


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "idlelib", "lib2to3", "__pycache__"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(x for x in dirnames if x not in skip)
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return out


def write_doc(path: Path, parts: list[tuple[str, str]], comment: str = "") -> int:
    text = "".join(f"{comment}==> {name} <==\n{body.rstrip()}\n\n" for name, body in parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return len(text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (created; must not hold other files)")
    ap.add_argument("--deb", type=Path, help="a linux-doc-<version>_*.deb (apt-get download linux-doc-6.1)")
    ap.add_argument("--doc-dir", type=Path, help="or an extracted Documentation/ folder")
    ap.add_argument("--site", type=Path, action="append", default=None,
                    help="site-packages folder(s) to take Python distributions from (default: this interpreter's)")
    ap.add_argument("--translations", action="store_true",
                    help="keep Documentation/translations (Chinese, Japanese, ...; left out: English prose only)")
    ap.add_argument("--no-python", action="store_true", help="leave out the Python source code")
    ap.add_argument("--stdlib", action="store_true", help="add the Python standard library as one document")
    ap.add_argument("--exclude", action="append", default=[], help="a distribution name to leave out (repeatable)")
    ap.add_argument("--only", action="append", default=[],
                    help="keep only these distributions (repeatable; the standard library is python3.X-stdlib)")
    args = ap.parse_args(argv)

    entries = []
    if args.deb or args.doc_dir:
        src = args.deb if args.deb else args.doc_dir
        if not src.exists():
            raise SystemExit(f"error: {src}: no such file or directory")
        texts = deb_documentation(src) if args.deb else dir_documentation(src)
        for topic, parts in sorted(group_by_topic(texts).items()):
            if topic == "translations" and not args.translations:
                continue
            n = write_doc(args.out / "linux-doc" / f"{topic}.txt", parts)
            entries.append({"document": f"linux-doc/{topic}.txt", "source": str(src.name), "bytes": n,
                            "files": len(parts)})
    if not args.no_python:
        sites = args.site or [Path(p) for p in [*site.getsitepackages(), site.getusersitepackages()]]
        projects = python_projects(sites)
        if args.stdlib:
            projects[f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib"] = stdlib_files()
        missing = sorted(set(args.only) - set(projects))
        if missing:
            raise SystemExit(f"error: --only {', '.join(missing)}: no such distribution here "
                             f"(found: {', '.join(sorted(projects)) or 'none'})")
        for name in sorted(projects):
            if name in args.exclude or (args.only and name not in args.only):
                continue
            stdlib_root = Path(sysconfig.get_paths()["stdlib"])
            parts = []
            for f in projects[name]:
                try:
                    body = f.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                # headers show the path inside the project, not this machine's site-packages folder
                header = f.relative_to(stdlib_root).as_posix() if name.endswith("-stdlib") else _inside(str(f))
                parts.append((header, body))
            n = write_doc(args.out / "python" / f"{name}.txt", parts, comment="# ")
            entries.append({"document": f"python/{name}.txt", "source": "python", "bytes": n, "files": len(parts)})
    if not entries:
        raise SystemExit("error: nothing to write: give --deb/--doc-dir and/or leave Python sources in")
    (args.out / "corpus.json").write_text(json.dumps({"documents": entries}, indent=1) + "\n")
    total = sum(e["bytes"] for e in entries)
    big = sorted(entries, key=lambda e: -e["bytes"])[:5]
    print(f"{args.out}: {len(entries)} documents, {total / 1e6:.1f} MB; largest: "
          + ", ".join(f"{e['document']} ({e['bytes'] / 1e6:.1f} MB)" for e in big))
    return 0


def _inside(path: str) -> str:
    """A path inside ``site-packages`` (or ``dist-packages``) -> the part after it (``torch`` then the rest)."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


if __name__ == "__main__":
    sys.exit(main())
