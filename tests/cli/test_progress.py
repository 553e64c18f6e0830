"""Progress of long prefills (``cli/_progress.py``): a bar in a terminal, a line an interval in logs."""

from __future__ import annotations

import io

from hsa_app.evaluation.core import PrefillProgress
from hsa_cli._progress import PrefillDisplay, PromptDisplay
from rich.console import Console


def test_prefill_display_prints_lines_in_logs_and_a_bar_in_a_terminal() -> None:
    events = [PrefillProgress(length=1 << 24, depth=0.5, first=0, batch=2, samples=4, tokens=n, total=1 << 24)
              for n in (1 << 22, 1 << 23, 1 << 24)]
    log = io.StringIO()
    with PrefillDisplay(Console(file=log, force_terminal=False, width=200), interval=0.0) as show:
        for e in events:
            show(e)
        short = PrefillProgress(length=4096, depth=0.5, first=0, batch=1, samples=4, tokens=4096, total=4096)
        show(short)  # short prefills: nothing
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("  prefill 16m depth 0.50, samples 1-2 of 4: ") for line in lines)
    assert "8.4M of 16.8M tokens" in lines[1] and "tokens/s" in lines[1]
    assert "GPU peak" not in lines[1]  # off CUDA: no peak to show
    peak = io.StringIO()
    with PrefillDisplay(Console(file=peak, force_terminal=False, width=200), interval=0.0) as show:
        show(PrefillProgress(length=1 << 24, depth=0.5, first=0, batch=2, samples=4, tokens=1 << 22,
                             total=1 << 24, gpu_peak_bytes=3 << 29))
    assert peak.getvalue().rstrip().endswith("tokens/s, GPU peak 1.50 GiB")
    quiet = io.StringIO()
    with PrefillDisplay(Console(file=quiet, force_terminal=False), interval=3600.0) as show:
        for e in events:
            show(e)
    assert quiet.getvalue() == ""  # at most one line an interval: the first comes after it
    term = io.StringIO()
    with PrefillDisplay(Console(file=term, force_terminal=True, width=120)) as show:
        for e in events:
            show(e)
    assert "prefill 16m" in term.getvalue()  # drawn live, then cleared (transient)


def test_prompt_display_counts_the_prompts_tokens() -> None:
    log = io.StringIO()
    with PromptDisplay(Console(file=log, force_terminal=False, width=200), interval=0.0) as show:
        for done in (1 << 21, 3 << 21):
            show(done, 3 << 21)
        show(100, 4096)  # a short prompt: nothing
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("  prefill of the prompt: 2.1M of 6.3M tokens, ")
