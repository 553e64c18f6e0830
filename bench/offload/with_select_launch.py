"""Run an `hsa` command with the selection's launch settings replaced, to time a setting end to end.

    SELECT_LAUNCH='{"warps": 4, "stages": 2}' python3 bench/offload/with_select_launch.py eval passkey RUN ...

``SELECT_LAUNCH`` holds the keyword arguments of ``SelectLaunch`` (JSON; ``{}``: the defaults). The
setting replaces the table row of every architecture for this process only: the library's own
choice stays the measured table in ``kernels/hsa_select/selection.py``.
"""

from __future__ import annotations

import json
import os
import sys
from types import MappingProxyType

import hsa_kernels.hsa_select.selection as selection


def use_select_launch(text: str) -> selection.SelectLaunch:
    """Make the ``SelectLaunch`` keyword arguments in JSON ``text`` the table row of every architecture for
    this process, and return the row.

    Raises:
        ValueError: bad JSON, an unknown field or a value ``SelectLaunch`` refuses (nothing replaced).
    """
    try:
        row = selection.SelectLaunch(**json.loads(text))
    except TypeError as e:  # an unknown field
        raise ValueError(str(e)) from e
    # select_settings_for reads these module globals at each call, so every selection of this process
    # (the fused one and the windowed one of host landmarks) gets the row
    selection.MEASURED = MappingProxyType({90: row})
    selection.FALLBACK = row
    return row


def main() -> int:
    try:
        row = use_select_launch(os.environ.get("SELECT_LAUNCH", "{}"))
    except ValueError as e:  # bad JSON (json.JSONDecodeError is a ValueError) or a field SelectLaunch refuses
        print(f"error: SELECT_LAUNCH={os.environ.get('SELECT_LAUNCH')!r}: {e}", file=sys.stderr)
        return 2
    print(f"selection launch: {row}", flush=True)
    from hsa_cli.app import main as hsa_main

    sys.argv[0] = "hsa"
    hsa_main()  # typer exits with the command's own status
    return 0


if __name__ == "__main__":
    sys.exit(main())
