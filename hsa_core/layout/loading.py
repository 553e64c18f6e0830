"""Reading layout files, ``--set key.path=value`` overrides, and dumping the canonical spec."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError, truncate
from ..plugins import PluginHost
from .checks import show
from .spec import resolve


def _parse_key_path(text: str) -> list[str]:
    parts = text.split(".")
    if not text or any(not part for part in parts):
        raise SpecError("", f"--set {truncate(repr(text), 80)}: expected key.path=value, e.g. model.d_model=256")
    return parts


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (value parsed as YAML) to a copy of a raw layout.

    Intermediate mappings are created as needed; a numeric part indexes a list (``layers.3.mlp=true``).
    """
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise SpecError("", f"--set {truncate(repr(item), 80)}: expected key.path=value, e.g. model.d_model=256")
        key, _, text = item.partition("=")
        parts = _parse_key_path(key.strip())
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            raise SpecError(key, f"--set value {truncate(repr(text), 80)} is not valid YAML "
                                 f"({exc.__class__.__name__})") from None
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth + 1])
            if isinstance(node, list):
                try:
                    idx = int(part)
                    if not -len(node) <= idx < len(node):
                        raise IndexError(idx)
                except (ValueError, IndexError):
                    raise SpecError(where, f"--set: {part!r} is not an index of a list of {len(node)}") from None
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                # YAML may have parsed `30:` as an int key (overrides); match it.
                if part not in node and part.isdigit() and int(part) in node:
                    node[part] = node.pop(int(part))
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise SpecError(".".join(parts[:depth]), f"--set {key}: cannot set a key inside "
                                                         f"{show(node)}")
    return out


#: Largest layout file read (the largest shipped layout is under 2 KB).
MAX_FILE_BYTES = 1 << 20
#: Most values a layout may hold, counting every YAML alias where it is used, and deepest nesting.
MAX_NODES = 100_000
MAX_DEPTH = 64


def check_document_size(raw: Any, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse documents whose expansion is huge or deep before anything walks them.

    YAML aliases make a few hundred bytes describe billions of values (an alias bomb) or a cycle;
    anything that later copies, compares or prints the document would expand them. This walk counts
    every use of every value and stops at ``max_nodes``, so it costs at most ``max_nodes`` steps.

    Raises:
        SpecError: more than ``max_nodes`` values or more than ``max_depth`` levels.
    """
    budget = max_nodes
    stack: list[tuple[Any, int]] = [(raw, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise SpecError("", f"the layout has more than {max_nodes:,} values (YAML aliases counted where "
                                "they are used); a layout is far smaller")
        if depth > max_depth:
            raise SpecError("", f"the layout is nested more than {max_depth} levels deep")
        if isinstance(node, Mapping):
            stack.extend((k, depth + 1) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


def _read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError("", f"the file is {size:,} bytes; a layout file is at most {MAX_FILE_BYTES:,} bytes",
                            str(path))
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpecError("", f"cannot read layout file: {exc.strerror or exc}", str(path)) from None
    except UnicodeDecodeError as exc:
        raise SpecError("", f"not a UTF-8 text file (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                            "a layout is YAML text", str(path)) from None
    try:
        return yaml.safe_load(text)
    except ValueError as exc:  # e.g. an integer literal past Python's 4,300-digit conversion limit
        raise SpecError("", f"invalid value in the YAML: {exc}", str(path)) from None
    except RecursionError:
        raise SpecError("", f"the YAML is nested more than Python can parse (limit {MAX_DEPTH} levels)",
                        str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError("", f"invalid YAML{where}: {problem}", str(path)) from None


def load_spec(path_or_mapping: str | Path | Mapping[str, Any], *, overrides: Sequence[str] = (),
              source: str | None = None, host: PluginHost | None = None) -> dict[str, Any]:
    """Read a layout (YAML file or mapping), apply ``--set`` overrides, return the canonical spec.

    Args:
        path_or_mapping: a YAML file path, or an already parsed mapping.
        overrides: ``key.path=value`` strings, e.g. ``model.d_model=256``, ``memories.mid.chunk_size=32``.
        source: name used in error messages (default: the file path).
        host: plugin host (default: the process-wide one).

    Raises:
        SpecError: with ``source`` set, for unreadable files, invalid YAML and invalid layouts.
    """
    if isinstance(path_or_mapping, str | Path):
        path = Path(path_or_mapping)
        source = source or str(path)
        try:
            raw = _read_yaml(path)
        except SpecError as exc:
            raise exc.with_source(source) from None
    else:
        raw = path_or_mapping
    try:
        if not isinstance(raw, Mapping):
            raise SpecError("", f"a layout is a mapping at the top level, got {show(raw)}")
        check_document_size(raw)
        if overrides:
            raw = apply_overrides(raw, overrides)
            check_document_size(raw)
        return resolve(raw, host=host)
    except RecursionError:
        raise SpecError("", "the layout is nested too deeply", source) from None
    except SpecError as exc:
        raise (exc.with_source(source) if source else exc) from None


class _SpecDumper(yaml.SafeDumper):
    pass


def _repr_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    # Layers and small option mappings in flow style keep a 50-layer spec readable (one line each).
    is_layer = "kind" in data and "index" in data
    is_small = len(data) <= 6 and all(not isinstance(v, dict | list) for v in data.values())
    flow = is_layer or is_small
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_SpecDumper.add_representer(dict, _repr_dict)


def dump_spec(spec: Mapping[str, Any]) -> str:
    """The canonical spec as YAML (key order kept; one line per layer); ``yaml.safe_load`` reads it back."""
    return yaml.dump(dict(spec), Dumper=_SpecDumper, sort_keys=False, width=1 << 16, allow_unicode=True)
