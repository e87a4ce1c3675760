"""User-facing errors: each names where the problem is, what is wrong, and how to fix it.

Every error a user can cause or meet is a :class:`DevserverError`: `where` (a field, a file, a host, a tool),
`message`, `fix`, and whether it is a problem with the input (``bad_input``: the CLI exits 2) or a failure
(exit 1). Its ``str()`` is the one line the CLI prints after ``error:``; an error that carries a list of
:class:`Problem` (a spec, the hosts of an update) renders as a headline and one ``✗`` line per problem, the same
text the Pulumi stacks raise (:func:`problems_text`). Nothing that a user can cause ends in a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

Severity = Literal["error", "warning"]

PROBLEM_MARK = "✗"


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


def problem_line(problem: Problem) -> str:
    """One problem as it is listed under a headline: indented, marked, rendered."""
    return f"  {PROBLEM_MARK} {problem.render()}"


def problems_text(headline: str, problems: Sequence[Problem]) -> str:
    """`headline`, then one :func:`problem_line` per problem: what `devserver plan` prints (without colour) and
    what a stack's RunError says."""
    return "\n".join([headline, *(problem_line(problem) for problem in problems)])


class DevserverError(Exception):
    """Base of every user-facing error: where, what, the fix, and whether the input was at fault.

    ``str(error)`` is ``"where: message — fix: fix (log: log)"`` (each part only when set), or
    :func:`problems_text` when the error carries `problems`. Subclasses keep their own constructor signatures and
    set `bad_input` for the exit code class (True: exit 2, a problem with the input; False: exit 1).
    """

    bad_input: ClassVar[bool] = False

    def __init__(
        self,
        where: str,
        message: str,
        fix: str = "",
        *,
        log: Path | None = None,
        problems: Sequence[Problem] = (),
    ) -> None:
        super().__init__(where, message, fix)
        self.where = where
        self.message = message
        self.fix = fix
        self.log = log
        self.problems = list(problems)

    @property
    def headline(self) -> str:
        """``where: message`` (or the message alone when there is no `where`), without the fix."""
        return f"{self.where}: {self.message}" if self.where else self.message

    def __str__(self) -> str:
        if self.problems:
            return problems_text(self.headline, self.problems)
        fix = f" — fix: {self.fix}" if self.fix else ""
        log = f" (log: {self.log})" if self.log else ""
        return f"{self.headline}{fix}{log}"


class InputError(DevserverError):
    """A command-line argument or option that cannot be used (exit 2)."""

    bad_input = True


class SpecError(DevserverError):
    """A spec that cannot be used; `source` names the file (or ``<built-in local>``), `problems` says why."""

    bad_input = True

    def __init__(self, source: str, problems: list[Problem] | None = None) -> None:
        found = problems if problems is not None else []
        count = len(found)
        super().__init__(source, f"{count} problem{'s' if count != 1 else ''}", problems=found)
        self.source = source
        self.problems = found


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
