from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny_model():
    from hsa_core.layout import load_spec
    from hsa_core.model import HSALanguageModel

    model = HSALanguageModel.from_spec(load_spec(Path(__file__).parents[1] / "training" / "tiny.yaml"))
    return model.eval()
