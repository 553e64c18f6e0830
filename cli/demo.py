"""``hsa demo [SPEC]``: the README's main job, on the CPU in seconds.

Builds a layout (default: the CPU-sized RAMba preset ``ramba-cpu``), prints its layer table, runs a
forward pass on a random batch and a short greedy generation, then checks that incremental decoding
(prefill + one token at a time through the recurrent states and the incremental chunk memory)
gives the same logits as one full forward pass over the same tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from ._common import (
    EXIT_CHECK_FAILED,
    PLUGIN_OPTION,
    SET_OPTION,
    build_model,
    console,
    fail,
    guarded,
    load_plugins,
    load_spec_from,
)
from ._summary import print_summary

DEFAULT_SPEC = "ramba-cpu"


def _default_seq_len(canonical: dict[str, Any]) -> int:
    """Long enough that HSA has several complete chunks to retrieve from, and odd-sized on purpose
    (a partial last chunk exercises the pending-token path of the chunk memory)."""
    sizes = [m["chunk_size"] for m in canonical.get("memories", {}).values()]
    chunk = max(sizes) if sizes else 16
    return 4 * chunk + chunk // 2 + 1


@guarded
def demo(
    spec: str = typer.Argument(DEFAULT_SPEC, help="Layout YAML file or preset name."),
    set_: list[str] | None = SET_OPTION,
    batch: int = typer.Option(2, "--batch", min=1, help="Sequences in the random batch."),
    seq_len: int | None = typer.Option(None, "--seq-len", min=1, help="Prompt length (default: 4.5 chunks + 1)."),
    new_tokens: int = typer.Option(16, "--new-tokens", min=1, help="Tokens to generate."),
    seed: int = typer.Option(0, "--seed", help="Seeds the weights and the random batch."),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Max |logit difference| (relative to max |logit|)."),
    plugin: list[Path] | None = PLUGIN_OPTION,
) -> None:
    """Build a CPU-sized model, run forward + generation on CPU, and check decoding equals full forward."""
    import torch

    from hsa_core.summary import describe

    load_plugins(plugin)
    path, canonical = load_spec_from(spec, set_)
    length = seq_len or _default_seq_len(canonical)
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = build_model(canonical, device="cpu", source=path).eval()
    console().print(f"built {canonical['name']} from {path} in {time.perf_counter() - start:.1f}s")
    print_summary(describe(model, context_len=length + new_tokens),
                  title=f"{canonical['name']} on cpu, context {length + new_tokens}")

    vocab = canonical["model"]["vocab_size"]
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(ids).logits
        console().print(f"forward: input {tuple(ids.shape)} -> logits {tuple(logits.shape)} "
                      f"in {time.perf_counter() - start:.2f}s")
        if not torch.isfinite(logits).all():
            fail("demo: the forward pass produced non-finite logits", EXIT_CHECK_FAILED)

        start = time.perf_counter()
        generated = model.generate(ids, max_new_tokens=new_tokens)
        if generated.shape[1] == new_tokens:  # only the new tokens were returned
            generated = torch.cat([ids, generated], dim=1)
        console().print(f"generate: {new_tokens} new tokens x {batch} sequences (greedy) "
                      f"in {time.perf_counter() - start:.2f}s")
        console().print(f"  sequence 0, new tokens: {generated[0, length:].tolist()}")

        # The check: full forward over prompt + generated tokens vs prefill then one token at a time.
        full = model(generated).logits
        out = model(ids, return_cache=True)
        pieces, cache = [out.logits], out.cache
        for t in range(length, generated.shape[1]):
            out = model(generated[:, t:t + 1], cache, return_cache=True)
            pieces.append(out.logits)
            cache = out.cache
        incremental = torch.cat(pieces, dim=1)

    scale = max(1.0, float(full.abs().max()))
    diff = float((incremental - full).abs().max())
    greedy_agrees = bool((full[:, length - 1:-1].argmax(-1) == generated[:, length:]).all())
    console().print(f"check: incremental decoding vs full forward over {generated.shape[1]} tokens: "
                  f"max |logit diff| = {diff:.2e} (max |logit| {scale:.2f}); "
                  f"greedy tokens {'match' if greedy_agrees else 'DIFFER'}")
    if diff > tolerance * scale or not greedy_agrees:
        fail(f"demo: incremental decoding differs from the full forward (max |logit diff| {diff:.2e} > "
             f"{tolerance * scale:.2e} or greedy tokens differ)", EXIT_CHECK_FAILED)
    console().print("[bold green]ok[/bold green]: incremental decoding matches the full forward pass")
