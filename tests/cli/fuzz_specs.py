"""Property-based run of every command that reads a spec, over generated YAML and ``--set`` values.

Run by ``tests/cli/test_spec_fuzz.py`` in a subprocess whose address space is capped at its size
after the imports plus 2 GiB (so a blow-up becomes a ``MemoryError`` in the process, not pressure on
the machine). For each generated case, the command must:

* exit with a documented code (never 70, the internal-error code), print no traceback, and on
  failure print exactly one ``error:`` line (or typer's own usage message for exit code 2);
* never run out of memory (``out of memory`` in the message; refusals checked *before* allocating
  say ``too large`` instead);
* finish within 10 seconds (a per-case alarm raises a ``BaseException`` that no command catches).

``HSA_FUZZ_EXAMPLES`` scales the number of cases (default: a CI-sized run of about a minute).
Derandomized: CI sees the same cases every run; set ``HSA_FUZZ_SEED`` to explore others.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import TOY_LAYOUT, TOY_PLUGIN  # noqa: E402

LIMIT_S = 10.0
LIMITS = {"s": LIMIT_S}  # the limit in force (raised for the warm-up only)
DOCUMENTED = {0, 1, 2, 3, 5, 6, 7}
SCALE = float(os.environ.get("HSA_FUZZ_EXAMPLES", "1"))


EXIT_COUNTS: dict[str, Counter[int]] = {}


class Hang(BaseException):
    """Raised by the alarm: a case ran longer than :data:`LIMIT_S` (no command catches BaseException)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang(f"a case ran longer than {LIMITS['s']:g} s")


# -- strategies --------------------------------------------------------------------------------------
SYMBOLS = ["E", "H", "toy_ema", "hsa", "X"]
pattern_items = st.recursive(
    st.sampled_from(SYMBOLS),
    lambda inner: st.tuples(st.lists(inner, min_size=1, max_size=3), st.sampled_from(["", "*2", "*0", "*99999999"]))
    .map(lambda t: "(" + " ".join(t[0]) + ")" + t[1]),
    max_leaves=6,
)
patterns = st.lists(st.tuples(pattern_items, st.sampled_from(["", "*1", "*3", "*4097", "*" + "9" * 30, " |"])),
                    min_size=0, max_size=4).map(lambda items: " ".join(a + b for a, b in items))

scalars = st.one_of(
    st.integers(-3, 300), st.integers(10**6, 10**30), st.sampled_from([0, 1, 2, 4, 8, 16, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=20), st.sampled_from(["mid", "mid_sel", "stick_breaking", "softmax", "cls", "mean", "1e-5"]),
    patterns,
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)

#: Values a user would plausibly write (so that many cases are valid and reach building, training, demo).
plausible = st.one_of(st.integers(1, 64), st.sampled_from([1, 2, 4, 8, 16, 32]), st.booleans(),
                      st.floats(0.01, 0.99), st.sampled_from(["E", "H", "E*2 H E", "(H E)*2", "E*3"]))

NUMERIC = ["model.vocab_size", "model.d_model", "memories.mid.after_layer", "memories.mid.chunk_size",
           "memories.mid.kv_heads", "memories.mid.head_dim", "retrieval.mid_sel.topk",
           "retrieval.mid_sel.retrieval_dim", "retrieval.mid_sel.retrieval_heads", "symbols.H.num_heads"]

PATHS = [
    "name", "version", "model", "model.vocab_size", "model.d_model", "model.tie_embeddings", "model.norm_eps",
    "model.mlp_hidden", "defaults", "defaults.toy_ema", "defaults.toy_ema.decay", "memories", "memories.mid",
    "memories.mid.after_layer", "memories.mid.chunk_size", "memories.mid.kv_heads", "memories.mid.head_dim",
    "memories.mid.encoder", "memories.mid.encoder.layers", "memories.mid.landmark", "retrieval",
    "retrieval.mid_sel", "retrieval.mid_sel.memory", "retrieval.mid_sel.topk", "retrieval.mid_sel.retrieval_dim",
    "retrieval.mid_sel.retrieval_heads", "retrieval.mid_sel.weighting", "retrieval.mid_sel.shared", "symbols",
    "symbols.E", "symbols.H", "symbols.H.num_heads", "symbols.H.selection", "layers", "overrides",
    "overrides.0", "overrides.1-3", "overrides.0-99999999", "description", "unknown_key",
]


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return
        node = node.setdefault(part, {})
    if isinstance(node, dict):
        node[parts[-1]] = value


@st.composite
def documents(draw: st.DrawFn) -> str:
    """YAML text: the toy layout with a few values replaced, sometimes an alias bomb or raw noise."""
    doc = yaml.safe_load(yaml.safe_dump(TOY_LAYOUT))
    if draw(st.booleans()):  # plausible edits of the numbers and the pattern: often valid, reaching the model
        for path in draw(st.lists(st.sampled_from(NUMERIC), max_size=3)):
            _set_path(doc, path, draw(st.sampled_from([1, 2, 3, 4, 8, 16, 32, 64])))
        if draw(st.booleans()):
            doc["layers"] = draw(st.sampled_from(["E H", "E*2 H E", "E (H E)*3", "E*2 | (H E)*2", "H E", "E*4"]))
    wild = st.one_of(values, patterns)
    n = draw(st.sampled_from([0, 0, 1, 1, 2, 4]))
    for path, value in draw(st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(plausible, plausible, wild)),
                                     min_size=n, max_size=n)):
        _set_path(doc, path, value)
    text = yaml.safe_dump(doc, sort_keys=False)
    extra = draw(st.sampled_from(["none"] * 8 + ["bomb", "cycle", "noise", "deep"]))
    if extra == "bomb":
        lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"] + [
            f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]" for i in range(1, 9)]
        text = "\n".join(lines) + "\n" + text.replace("name: toy-hsa", "name: *b8")
    elif extra == "cycle":
        text += "description: &c [1, *c]\n"
    elif extra == "noise":
        text = draw(st.text(max_size=200))
    elif extra == "deep":
        text += "description: " + "[" * 500 + "]" * 500 + "\n"
    return text


set_values = st.just([]) | st.just([]) | st.lists(
    st.one_of(
        st.tuples(st.sampled_from(PATHS), st.one_of(plausible, values, patterns)).map(
            lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1], default_flow_style=True).strip().removesuffix('...').strip()}"),
        st.text(max_size=30),
        st.sampled_from(["layers=E*99999999", "layers=(E*64)*65", "model.d_model=" + "[" * 300,
                         "overrides.0-99999999999={mlp: true}", "=", ".=1", "a..b=1", "layers.0=E"]),
    ),
    max_size=3,
)


# -- the property ----------------------------------------------------------------------------------
def run_case(command: str, text: str, sets: list[str], workdir: Path) -> None:
    from hsa_cli.app import app
    from typer.testing import CliRunner

    spec = workdir / "spec.yaml"
    spec.write_text(text)
    args = {
        "validate": ["validate", str(spec)],
        "build": ["build", str(spec)],
        "build-cpu": ["build", str(spec), "--device", "cpu", "--json"],
        "train": ["train", str(spec), "--out", str(workdir / f"run-{time.monotonic_ns()}"), "--steps", "1",
                  "--seq-len", "64", "--batch-size", "1", "--no-progress", "--checkpoint-every", "0",
                  "-t", "num_symbols=8"],
        "demo": ["demo", str(spec)],
    }[command]
    for item in sets:
        args += ["--set", item]
    args += ["--plugin", str(TOY_PLUGIN)]
    signal.setitimer(signal.ITIMER_REAL, LIMITS["s"])
    start = time.perf_counter()
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    took = time.perf_counter() - start
    where = f"{command} {sets!r} on:\n{text[:2000]}"
    if isinstance(result.exception, Hang):
        raise AssertionError(f"over {LIMITS['s']:g} s: {where}")
    code, out, err = result.exit_code, result.stdout, result.stderr
    EXIT_COUNTS.setdefault(command, Counter())[code] += 1
    if os.environ.get("HSA_FUZZ_VERBOSE"):
        print(command, code, err.strip()[:160], flush=True)
    assert "Traceback" not in out + err, f"traceback: {where}\n{err[-3000:]}"
    assert code in DOCUMENTED, f"exit {code} ({err.strip()[:500]}): {where}"
    assert "out of memory" not in err, f"ran out of memory: {where}\n{err[:500]}"
    if code != 0:
        lines = err.strip().splitlines()
        usage = code == 2 and "Usage:" in err
        assert usage or (len(lines) == 1 and lines[0].startswith("error: ")), f"not one line: {err[:800]} {where}"
        assert len(err) < 2000, f"message of {len(err)} chars: {where}"
    assert took < LIMITS["s"], f"{took:.1f} s: {where}"


def property_for(command: str, examples: int, workdir: Path) -> None:
    fuzz_seed = int(os.environ.get("HSA_FUZZ_SEED", "0"))

    @settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
              derandomize=fuzz_seed == 0, suppress_health_check=list(HealthCheck), print_blob=True,
              # no explain phase: it traces every line (sys.settrace), 10-100x slower than the commands
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
    @seed(fuzz_seed)
    @given(text=documents(), sets=set_values)
    def prop(text: str, sets: list[str]) -> None:
        run_case(command, text, sets, workdir)

    prop()


def main() -> int:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)
    import hsa_cli.app  # noqa: F401  (imports count towards the baseline, not the budget)

    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    budget = 2 << 30
    resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    counts = {"validate": 60, "build": 40, "build-cpu": 20, "train": 12, "demo": 12}
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up, untimed: the first build imports torch._dynamo lazily (seconds on a loaded machine),
        # a one-time cost of the process that is not any case's doing.
        LIMITS["s"] = 300.0
        for command in counts:
            run_case(command, yaml.safe_dump(TOY_LAYOUT), [], Path(tmp))
        LIMITS["s"] = LIMIT_S
        EXIT_COUNTS.clear()  # the counts are of generated cases only
        for command, n in counts.items():
            start = time.perf_counter()
            property_for(command, n, Path(tmp))
            print(f"{command}: {max(1, int(n * SCALE))} cases in {time.perf_counter() - start:.1f} s; exit codes "
                  f"{dict(sorted(EXIT_COUNTS.get(command, Counter()).items()))}", flush=True)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    assert grown < budget, f"peak resident memory grew by {grown / 2**30:.2f} GiB"
    print(f"ok (peak RSS growth {grown / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
