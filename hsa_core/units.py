"""Human-readable counts and sizes (a leaf module: anything may import it)."""

from __future__ import annotations

__all__ = ["format_bytes", "format_count"]


def format_count(n: int) -> str:
    """``368_300_000 -> '368.30M'``; ``T`` up to 1000T, then ``6.05e+17`` (no ``605000177.85B``)."""
    if abs(n) >= 1e15:
        return f"{n:.2e}"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_bytes(n: int) -> str:
    """``1536 -> '1.50 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover
