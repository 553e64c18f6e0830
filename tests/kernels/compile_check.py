"""Compile every Triton kernel the package launches for Hopper (sm_90) on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``, what the CPU tests run) accepts code the real compiler rejects
(e.g. a variable whose block shape differs between the two sides of a runtime ``if``). This module runs
the real wrappers on small CPU tensors with ``JITFunction.__getitem__`` patched so that ``kernel[grid](...)``
launches nothing but records the call; each recorded call is then bound by Triton's own launcher code
(``create_function_from_signature`` for a CUDA sm_90 backend: the same argument types, int == 1 / constexpr
specialisations and 16-divisibility attributes a launch on the H200 computes) and compiled by
``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` down to the cubin (ptxas ships with the triton wheel).

It must run in a process where ``TRITON_INTERPRET`` is unset at import: under the interpreter
``triton.jit`` returns interpreter wrappers, triton.language's own jitted helpers (``tl.zeros``, ...)
included, and the front end cannot compile those. ``test_compile_sm90.py`` therefore starts it as a
subprocess::

    python tests/kernels/compile_check.py CASE [CASE ...]   # prints one JSON line per case

Cases (``CASES``) are named configurations of the wrappers; each lists the kernels it must launch.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parents[2] / "kernels"
ARCH = 90

# ---------------------------------------------------------------------------------------------------
# Cases: name -> (runner, kernels it must launch). Runners import lazily (the test process imports this
# module only for the names).

_IDX = {"_index_keys_kernel", "_index_bounds_kernel", "_index_segments_kernel"}
_FWD_ALL = {"_hsa_fwd_kernel", "_hsa_fwd_block_kernel"}
_BWD_ALL = {"_hsa_bwd_fused_kernel", "_hsa_bwd_kv_reduce_kernel", "_hsa_bwd_dq_reduce_kernel"}


def _attention_case(dtype: str, G: int, D: int, S: int = 64, sink: bool = False, atomic_dq: bool = False):
    """Forward in every schedule (query, block), backward by default and (``atomic_dq``) with atomic dQ,
    the inverse index by the Triton kernels, at the default launch settings."""

    def run() -> None:
        import torch
        from hsa_kernels.hsa_attention import backward as bwd
        from hsa_kernels.hsa_attention import forward as fwd

        dt = getattr(torch, dtype)
        B, T, H, K, C = 2, 64, 2, 8, 80  # B*H*C = 320 chunks (> one search program), B*T*H*K = 2048 pairs
        q = torch.randn(B, T, H * G, D).to(dt)
        k = torch.randn(B, C * S, H, D).to(dt)
        v = torch.randn(B, C * S, H, D).to(dt)
        idx = torch.randint(-1, C, (B, T, H, K), dtype=torch.int32)
        w = torch.rand(B, T, H, K)
        do = torch.randn_like(q)
        scale = D ** -0.5
        for schedule in fwd.SCHEDULES:
            fwd.hsa_attention_fwd(q, k, v, idx, w, S, scale, sink, schedule=schedule, store_lse=True)
        lse = torch.zeros(B, T, H, K, G)
        for atomic in (False, True) if atomic_dq else (False,):
            bwd.hsa_attention_bwd(do, q, k, v, idx, w, lse, S, scale, atomic_dq=atomic)

    return run, _IDX | _FWD_ALL | _BWD_ALL


def _decode_case(dtype: str, G: int, D: int, S: int = 64, sink: bool = False):
    """The decode entry point (T == 1, no LSE store)."""

    def run() -> None:
        import torch
        from hsa_kernels.hsa_decode import hsa_decode_triton

        dt = getattr(torch, dtype)
        B, H, K, C = 2, 2, 8, 40
        q = torch.randn(B, 1, H * G, D).to(dt)
        k = torch.randn(B, C * S, H, D).to(dt)
        v = torch.randn(B, C * S, H, D).to(dt)
        idx = torch.randint(-1, C, (B, 1, H, K), dtype=torch.int32)
        hsa_decode_triton(q, k, v, idx, torch.rand(B, 1, H, K), chunk_size=S, sink=sink)

    return run, {"_hsa_fwd_kernel"}


def _select_case(dtype: str, dr: int, topk: int, weighting: str, window: int | None = None,
                 skip_merges: bool = False, T: int = 256, splits: int = 1, group: int = 16, long_scan: bool = False):
    """The fused selection at the production tile sizes (T, C >= the default tiles unless ``T`` is set;
    ``splits`` > 1: the landmark-slice variant that stores each slice's top-k; ``group`` > 1: the grouped
    scan and its rescoring kernel, 1: per-chunk merges; ``long_scan``: the warps and stages of a long
    scan, ``SelectLaunch.long_warps`` / ``long_stages``, which a small case would not reach)."""

    def run() -> None:
        import dataclasses

        import torch
        from hsa_kernels.hsa_select import SelectLaunch, hsa_select_triton

        dt = getattr(torch, dtype)
        B, Hr, C, S = 2, 2, 160, 64
        q = torch.randn(B, T, Hr, dr).to(dt)
        lm = torch.randn(B, C, Hr, dr).to(dt)
        launch = SelectLaunch(skip_merges=skip_merges, splits=splits, group=group)
        if long_scan:  # every scan at the long-scan pair
            launch = dataclasses.replace(launch, warps=launch.long_warps, stages=launch.long_stages)
        hsa_select_triton(q, lm, topk=topk, chunk_size=S, q_offset=4 * S, weighting=weighting, window=window,
                          launch=launch)

    return run, {"_hsa_select_kernel", "_hsa_rescore_kernel"} if group > 1 else {"_hsa_select_kernel"}


def _select_windows_case(dtype: str, dr: int):
    """The selection over landmarks in windows (host landmarks): each window's scan floored by the kept
    top-k, grouped, with its rescoring."""

    def run() -> None:
        import torch
        from hsa_kernels.hsa_select import hsa_select_windows_triton

        dt = getattr(torch, dtype)
        B, Hr, S, T = 1, 2, 64, 256
        q = torch.randn(B, T, Hr, dr).to(dt)
        windows = [(320, torch.randn(B, 320, Hr, dr).to(dt))]  # one window: each launch compiles once
        hsa_select_windows_triton(q, windows, topk=8, chunk_size=S, q_offset=640 * S)

    return run, {"_hsa_select_kernel", "_hsa_rescore_kernel"}


def _gather_case(dtype: str, row_shape: tuple[int, ...]):
    """The offloaded store's row gather (a chunk of K: S x H x D elements per row)."""

    def run() -> None:
        import torch
        from hsa_kernels.host_gather import gather_rows_triton

        src = torch.randn(40, *row_shape).to(getattr(torch, dtype))
        gather_rows_triton(src, torch.tensor([3, 1, 39]))

    return run, {"_gather_rows_kernel"}


#: The cases that also compile the backward's "fused_atomic" mode (``_hsa_bwd_fused_kernel`` ATOMIC_DQ=True).
ATOMIC_DQ_CASES = ("attn-bf16-G16-D64", "attn-bf16-G1-D128", "attn-bf16-G3-D64-sink")
#: The PTX of the atomic-dQ backward (ATOMIC_DQ) holds exactly this global atomic: the fp32 relaxed add of 4
#: contiguous elements per instruction; every other kernel holds none (deterministic).
ATOMIC_PTX = ["atom.global.gpu.relaxed.add.v4.f32"]

CASES: dict[str, Callable[[], tuple[Callable[[], None], set[str]]]] = {
    # attention: bf16 / fp32, G = 1, 3, 16, D = 64, 128 (and a non-power-of-two D: BLOCK_D != D)
    # (atomic_dq: the atomic-dQ backward too, in the bf16 cases: its fp32 compiles take ~8 s each)
    "attn-bf16-G16-D64": lambda: _attention_case("bfloat16", 16, 64, atomic_dq=True),
    "attn-bf16-G1-D128": lambda: _attention_case("bfloat16", 1, 128, sink=True, atomic_dq=True),
    "attn-bf16-G3-D64-sink": lambda: _attention_case("bfloat16", 3, 64, sink=True, atomic_dq=True),
    "attn-fp32-G3-D128": lambda: _attention_case("float32", 3, 128),
    "attn-fp32-G16-D64-sink": lambda: _attention_case("float32", 16, 64, sink=True),
    "attn-fp32-G1-D64": lambda: _attention_case("float32", 1, 64),
    "attn-bf16-G4-D96-S48": lambda: _attention_case("bfloat16", 4, 96, S=48),
    # chunks shorter than tl.dot's minimum of 16 rows (BLOCK_S padded to 16; the trainer tests' tiny RAMba)
    "attn-bf16-G2-D16-S8": lambda: _attention_case("bfloat16", 2, 16, S=8),
    # decode path
    "decode-bf16-G16-D64": lambda: _decode_case("bfloat16", 16, 64),
    "decode-fp32-G3-D128-sink": lambda: _decode_case("float32", 3, 128, sink=True),
    # fused selection
    "select-bf16-dr128-k16-stick": lambda: _select_case("bfloat16", 128, 16, "stick_breaking"),
    "select-fp32-dr64-k8-softmax-window": lambda: _select_case("float32", 64, 8, "softmax", window=96),
    "select-bf16-dr256-k8-skip-merges": lambda: _select_case("bfloat16", 256, 8, "stick_breaking", skip_merges=True),
    "select-bf16-dr128-windows-floored": lambda: _select_windows_case("bfloat16", 128),
    "select-bf16-dr128-k8-per-chunk-skip": lambda: _select_case("bfloat16", 128, 8, "stick_breaking", skip_merges=True,
                                                                group=1),
    # a long prefill's scan (from LONG_SCAN_FROM_LANDMARKS landmarks per program, the query tile resident)
    "select-bf16-dr128-k8-long-scan": lambda: _select_case("bfloat16", 128, 8, "softmax", skip_merges=True,
                                                          long_scan=True),
    # decode over many landmarks: slices scanned by separate programs (ramba-370m: one head of 1024)
    "select-bf16-dr1024-k8-decode-split": lambda: _select_case("bfloat16", 1024, 8, "stick_breaking", skip_merges=True,
                                                               T=1, splits=2),
    # the offloaded chunk store's row gather: a bf16 chunk of K (64 x 2 x 64), an fp32 odd-sized row
    "gather-bf16-chunk": lambda: _gather_case("bfloat16", (64, 2, 64)),
    "gather-fp32-odd": lambda: _gather_case("float32", (5, 3, 7)),
}


# ---------------------------------------------------------------------------------------------------
# Static inventory: the @triton.jit functions of the package that some wrapper launches (``name[``).

def launched_kernels() -> set[str]:
    """Names of the ``@triton.jit`` functions under kernels/ that the package launches (``name[grid]``)."""
    jitted: set[str] = set()
    sources = {p: p.read_text() for p in KERNELS_DIR.rglob("*.py")}
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
                jitted.add(node.name)
    every = "\n".join(sources.values())
    return {name for name in jitted if re.search(rf"\b{re.escape(name)}\[", every)}


# ---------------------------------------------------------------------------------------------------
# Recording and compiling (subprocess side).

class _Recorder:
    """Replaces ``kernel[grid](*args, **kwargs)``: binds the call like Triton's launcher for sm_90 and
    keeps (kernel, signature, constexprs, attrs, options); launches nothing."""

    def __init__(self) -> None:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        self.target = GPUTarget("cuda", ARCH, 32)
        self.backend = make_backend(self.target)
        self.binders: dict[int, Callable] = {}
        self.launches: list[dict] = []

    def launch(self, jf, args, kwargs) -> None:
        from triton import knobs
        from triton.runtime.jit import create_function_from_signature

        binder = self.binders.get(id(jf))
        if binder is None:
            binder = self.binders[id(jf)] = create_function_from_signature(jf.signature, jf.params, self.backend)
        kwargs = dict(kwargs)
        kwargs["debug"] = kwargs.get("debug", jf.debug) or knobs.runtime.debug
        bound, spec, _ = binder(*args, **kwargs)
        # What JITFunction._pack_args does (flat arguments only: the kernels take no tuples).
        options = self.backend.parse_options(kwargs)
        names = [p.name for p in jf.params]
        for key in kwargs:
            if key not in options.__dict__ and key not in names:
                raise KeyError(f"{jf.__name__}: keyword argument {key} was specified but unrecognised")
        signature = {n: s[0] for n, s in zip(names, spec)}
        values = list(bound.values())
        constexprs = {(i,): values[i] for i, s in enumerate(spec) if s[0] == "constexpr"}
        attrs = {(i,): self.backend.parse_attr(s[1]) for i, s in enumerate(spec) if isinstance(s[1], str)}
        self.launches.append(dict(jf=jf, signature=signature, constexprs=constexprs, attrs=attrs,
                                  options=options))


_COMPILED: dict[tuple, dict] = {}


def _compile(rec: _Recorder, launch: dict) -> dict:
    import triton
    from triton.compiler import ASTSource

    jf, options = launch["jf"], launch["options"]
    opt = {k: options.__dict__[k] for k in ("num_warps", "num_stages", "num_ctas")}
    key = (jf.__name__, tuple(launch["signature"].items()), repr(sorted(launch["constexprs"].items())),
           repr(sorted(launch["attrs"].items())), repr(sorted(options.__dict__.items())))
    if key in _COMPILED:
        return dict(_COMPILED[key], cached=True)
    names = list(launch["signature"])
    out = dict(kernel=jf.__name__,
               signature={n: t for n, t in launch["signature"].items() if t != "constexpr"},
               constexprs={names[i]: repr(v) for (i,), v in launch["constexprs"].items()},
               options=opt, stage=None, error=None)
    t0 = time.perf_counter()
    try:
        src = ASTSource(jf, launch["signature"], launch["constexprs"], launch["attrs"])
        compiled = triton.compile(src, target=rec.target, options=options.__dict__)
        out["stage"] = [s for s in ("ttir", "ttgir", "llir", "ptx", "cubin") if compiled.asm.get(s)][-1]
        out["shared"] = compiled.metadata.shared
        # global atomic / reduction instructions of the PTX (what tl.atomic_add became), sorted, distinct
        out["atomics"] = sorted(set(re.findall(r"\b(?:atom|red)\.global\.[\w.]+", compiled.asm.get("ptx", ""))))
    except Exception as e:  # every compile error is a test failure, reported whole
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = round(time.perf_counter() - t0, 2)
    _COMPILED[key] = out
    return dict(out, cached=False)


def run_case(name: str) -> dict:
    """Record the launches of case ``name`` and compile each distinct one for sm_90."""
    import triton
    from triton.runtime.jit import JITFunction

    if triton.knobs.runtime.interpret:
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset when triton is imported")
    runner, want = CASES[name]()
    rec = _Recorder()
    orig = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda self, grid: (lambda *a, **kw: rec.launch(self, a, kw))
    try:
        runner()
    finally:
        JITFunction.__getitem__ = orig
    results = [_compile(rec, launch) for launch in rec.launches]
    return dict(case=name, want=sorted(want), results=results)


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    for name in argv or list(CASES):
        print(json.dumps(run_case(name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
