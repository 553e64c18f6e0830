"""Limits checked before expanding: layer patterns, document size, and bounded values in messages."""

from __future__ import annotations

import time

import pytest
import yaml

from hsa_core.errors import SpecError, short_repr
from hsa_core.layout.checks import show
from hsa_core.layout.loading import check_document_size
from hsa_core.layout.pattern import expand_pattern
from hsa_core.limits import MAX_LAYERS


def test_pattern_at_the_limit_expands_and_one_more_is_refused() -> None:
    assert len(expand_pattern(f"M*{MAX_LAYERS}")) == MAX_LAYERS
    with pytest.raises(SpecError, match="more than 4,096 layers"):
        expand_pattern(f"M*{MAX_LAYERS} H")
    with pytest.raises(SpecError, match="more than 4,096 layers"):
        expand_pattern("(M*64)*65")


@pytest.mark.parametrize("text", ["M*99999999", "((M*1000)*1000)*1000", "M*" + "9" * 10_000,
                                  "(" * 100 + "M" + ")" * 100])
def test_huge_or_deep_patterns_fail_fast(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        expand_pattern(text)
    assert time.perf_counter() - start < 0.5 and len(str(info.value)) < 300


def test_alias_bombs_and_cycles_are_refused_in_bounded_time() -> None:
    bomb = yaml.safe_load("\n".join(
        ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 15)]))
    cycle = yaml.safe_load("a: &a [1, *a]")
    for doc in (bomb, cycle):
        start = time.perf_counter()
        with pytest.raises(SpecError, match=r"more than|nested more than"):
            check_document_size(doc)
        assert time.perf_counter() - start < 2.0
    with open("examples/ramba-370m.yaml") as fh:
        check_document_size(yaml.safe_load(fh))  # a real layout is far below


def test_values_in_messages_are_bounded() -> None:
    huge = "x" * 1_000_000
    nested: list = []
    for _ in range(10):
        nested = [nested] * 10  # 10**10 leaves by reference
    assert len(show(huge)) < 120 and len(show(nested)) < 120 and len(show(10 ** 4000)) < 80
    assert len(short_repr({"k" * 1000: list(range(10 ** 6))})) <= 120
    err = SpecError("a." * 10_000, "y" * 10_000)
    assert len(str(err)) < 1300


def test_integers_too_long_to_print_are_spec_errors(tmp_path) -> None:
    from hsa_core.layout import load_spec

    path = tmp_path / "l.yaml"
    path.write_text("model: {d_model: 1" + "0" * 5000 + "}\n")
    with pytest.raises(SpecError, match="invalid value"):
        load_spec(path)
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec("examples/ramba-cpu.yaml", overrides=["model.d_model=1" + "0" * 5000])
    assert "bits" in show(10 ** 6000)
