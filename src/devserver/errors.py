"""User-facing errors: each names where the problem is, the bad value, and how to fix it.

The CLI renders a :class:`SpecError` as a short list and exits with code 2; nothing that a user can cause by
writing a spec ends in a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec. `path` is the dotted field path (``machine.gpu.model``), empty for the file."""

    path: str
    message: str
    fix: str = ""
    value: str | None = None
    severity: Severity = "error"

    def render(self) -> str:
        where = self.path or "(file)"
        got = f" (got {self.value})" if self.value is not None else ""
        fix = f" — fix: {self.fix}" if self.fix else ""
        return f"{where}: {self.message}{got}{fix}"

    def as_dict(self) -> dict[str, str | None]:
        return {
            "path": self.path,
            "message": self.message,
            "fix": self.fix,
            "value": self.value,
            "severity": self.severity,
        }


@dataclass
class SpecError(Exception):
    """A spec that cannot be used; `source` names the file (or ``<built-in local>``)."""

    source: str
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {problem.render()}" for problem in self.problems]
        return "\n".join(lines)


class FieldError(ValueError):
    """Raised inside model validators to point at a field below the model being validated.

    pydantic reports a model validator's error at the model's own location; the loader appends `path` to it.
    """

    def __init__(self, path: str, message: str, fix: str = "", value: object = None) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.fix = fix
        self.value = value
