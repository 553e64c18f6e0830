"""Checkpoints of the authors' RAMba (RamstorageAI/long-context-modeling) <-> toolkit model directories.

* :func:`load_published`: their checkpoint (safetensors, or a torch state dict read with
  ``weights_only=True``) + a layout (a preset such as ``ramba-370m``, a YAML, or their
  ``config.json`` through :func:`layout_from_config`) -> a toolkit model (``save_pretrained`` it);
* :func:`export_published`: a toolkit model directory -> ``model.safetensors`` in their naming plus
  their ``config.json``;
* :func:`check_conversion`: the largest logit difference between the toolkit model and
  :func:`~hsa_core.convert.reference.reference_forward` (a float64 re-derivation of their math)
  on the same weights, over a built-in input.

Mismatches (a missing, unexpected or wrongly shaped tensor) raise :class:`ConvertError`, one line
naming the key.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoint import conversion_rules, published_shapes, to_published_state, to_toolkit_state
from .layout import PUBLISHED_EPS, ConvertError, config_from_spec, layout_from_config, published_groups
from .reference import ReferenceOutput, reference_forward

__all__ = [
    "PUBLISHED_EPS",
    "CheckResult",
    "ConvertError",
    "ReferenceOutput",
    "check_conversion",
    "check_input",
    "config_from_spec",
    "conversion_rules",
    "export_published",
    "layout_from_config",
    "load_checkpoint",
    "load_published",
    "published_groups",
    "published_shapes",
    "reference_forward",
    "to_published_state",
    "to_toolkit_state",
]

PUBLISHED_WEIGHTS = "model.safetensors"
PUBLISHED_CONFIG = "config.json"
_TORCH_FILES = ("pytorch_model.bin", "model.pt", "model.bin")


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], Path]:
    """Read a state dict: a ``.safetensors`` file, a torch file (``weights_only=True``), or a directory
    holding ``model.safetensors`` or ``pytorch_model.bin``. Returns the tensors and the file read.

    Raises:
        ConvertError: no checkpoint there, or a torch file that is not a flat ``{name: tensor}`` dict.
    """
    p = Path(path)
    if p.is_dir():
        for name in (PUBLISHED_WEIGHTS, *_TORCH_FILES):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise ConvertError(f"{p}: no {PUBLISHED_WEIGHTS} or {_TORCH_FILES[0]} in this directory")
    if not p.is_file():
        raise ConvertError(f"{p}: no such checkpoint file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p)), p
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types
        raise ConvertError(f"{p}: not a safetensors file or a torch state dict ({type(exc).__name__})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConvertError(f"{p}: expected a {{name: tensor}} state dict")
    return dict(state), p


def check_input(spec: Mapping[str, Any], tokens: int | None = None, seed: int = 0) -> Tensor:
    """The built-in check input: ``(1, T)`` token ids from a seeded generator, ``T = (k + 2) * S``
    by default (enough complete chunks that top-k really chooses)."""
    if tokens is None:
        mem = next(iter(spec["memories"].values()))
        topk = max(s["topk"] for s in spec["retrieval"].values())
        tokens = (topk + 2) * mem["chunk_size"]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec["model"]["vocab_size"], (1, tokens), generator=g)


@dataclass(frozen=True)
class CheckResult:
    """``max_abs``: the largest |logit difference|; ``max_ref``: the largest |reference logit|."""

    max_abs: float
    max_ref: float
    tokens: int

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.max_ref, 1e-30)


@torch.no_grad()
def check_conversion(model: Any, *, tokens: int | None = None, input_ids: Tensor | None = None) -> CheckResult:
    """Compare a toolkit model with the float64 re-derivation of the published forward on its own
    weights (in the authors' naming). The model is run in float64 on CPU (a float64 copy is made
    when it is not float64 already)."""
    spec = model.spec
    config = config_from_spec(spec)
    ids = check_input(spec, tokens) if input_ids is None else input_ids
    m64 = model if next(model.parameters()).dtype == torch.float64 else _float64_copy(model)
    was = m64.training
    m64.eval()
    try:
        ours = m64(ids.to(next(m64.parameters()).device)).logits.cpu()
    finally:
        m64.train(was)
    state = to_published_state(m64.state_dict(), spec)
    ref = reference_forward(state, config, ids).logits
    return CheckResult(float((ours - ref).abs().max()), float(ref.abs().max()), int(ids.shape[1]))


def _float64_copy(model: Any) -> Any:
    from ..model import HSALanguageModel

    copy = HSALanguageModel.from_spec(model.spec, device="meta")
    if set(dict(copy.named_buffers())) - set(copy.state_dict()):
        copy = HSALanguageModel.from_spec(model.spec, device="cpu")  # non-persistent buffers need real init
    copy.load_state_dict({k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()},
                         assign=True)
    if copy.spec["model"]["tie_embeddings"]:
        copy.lm_head.weight = copy.embedding.weight
    return copy


def load_published(checkpoint: str | os.PathLike[str], spec: Mapping[str, Any]) -> Any:
    """Their checkpoint + a canonical ``spec`` -> an :class:`~hsa_core.model.HSALanguageModel` (on CPU,
    in the checkpoint's dtype). Save it with ``model.save_pretrained(dir)``.

    Raises:
        ConvertError: the checkpoint does not match the model the spec describes (one line, the key).
    """
    from ..model import HSALanguageModel

    state, path = load_checkpoint(checkpoint)
    toolkit = to_toolkit_state(state, spec, source=str(path))
    model = HSALanguageModel.from_spec(spec, device="meta")
    if set(dict(model.named_buffers())) - set(model.state_dict()):
        model = HSALanguageModel.from_spec(spec, device="cpu")  # non-persistent buffers need real init
    tied = model.tied  # assigning the embedding unties the head: re-tie it
    missing, unexpected = model.load_state_dict(toolkit, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.embedding.weight
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:  # pragma: no cover - to_toolkit_state produced exactly the model's keys
        raise ConvertError(f"{path}: {(missing or unexpected)[0]}: not converted")
    return model


def export_published(model: Any, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` in the authors' layout: ``out/model.safetensors`` (their names, the tied head
    included as a copy, as their ``state_dict()`` has it) and ``out/config.json`` (their keys).

    Raises:
        ConvertError: the model is not one their code builds (the field is named).
        FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    config = config_from_spec(model.spec)
    state = to_published_state(model.state_dict(), model.spec)
    # Own contiguous copies: safetensors refuses views and shared storage (the split qkv, the tied head).
    tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    target.mkdir(parents=True, exist_ok=True)
    for name, write in ((PUBLISHED_WEIGHTS, lambda f: save_file(tensors, f, metadata={"format": "pt"})),
                        (PUBLISHED_CONFIG, lambda f: Path(f).write_text(json.dumps(config, indent=2) + "\n"))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target
