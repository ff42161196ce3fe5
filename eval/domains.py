"""Domains of a benchmark: a corruption and its severity (``clean`` has severity 0)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Domain", "CLEAN"]


@dataclass(frozen=True, order=True)
class Domain:
    """One test domain: a named corruption at a severity in 1..5, or ``clean`` at 0."""

    corruption: str
    severity: int

    def __post_init__(self) -> None:
        if self.corruption == "clean":
            if self.severity != 0:
                raise ValueError(f"the clean domain has severity 0, got {self.severity}")
        elif not 1 <= self.severity <= 5:
            raise ValueError(f"severity must be in 1..5 for {self.corruption!r}, got {self.severity}")

    def __str__(self) -> str:
        return self.corruption if self.corruption == "clean" else f"{self.corruption}-{self.severity}"


CLEAN = Domain("clean", 0)
