"""``hsa_core.envvars.env_choice``: unset or empty gives the default, values are normalised, anything
else is a usage error naming the variable, the value and the choices."""

from __future__ import annotations

import pytest

from hsa_core.envvars import env_choice
from hsa_core.errors import UsageError


def test_env_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HSA_TEST_CHOICE", raising=False)
    assert env_choice("HSA_TEST_CHOICE", ("a", "b"), "a") == "a"
    monkeypatch.setenv("HSA_TEST_CHOICE", "  ")
    assert env_choice("HSA_TEST_CHOICE", ("a", "b"), "a") == "a"
    monkeypatch.setenv("HSA_TEST_CHOICE", " B ")
    assert env_choice("HSA_TEST_CHOICE", ("a", "b"), "a") == "b"
    monkeypatch.setenv("HSA_TEST_CHOICE", "c")
    with pytest.raises(UsageError, match=r"^environment variable HSA_TEST_CHOICE='c' is not one of a, b$"):
        env_choice("HSA_TEST_CHOICE", ("a", "b"), "a")
