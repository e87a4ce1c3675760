"""How every command prints and fails: the two consoles, the exit codes, and the rendering of an error.

An error travels as a :class:`~devserver.errors.DevserverError` from the module that found it to the command,
which hands it to :func:`fail`: one ``error: where: message — fix: …`` line on stderr (or the problem list of a
spec or of hosts), or with ``--json`` one JSON object on stdout — ``{"ok": false, "error": LINE, "fix": FIX}``, or
``{["source": FILE,] "ok": false, "error": HEADLINE, "problems": [...]}`` — and the exit code of its class
(:class:`ExitCode`). Never a traceback.

Start-up stays cheap (`devserver --help`): Rich is imported when a console is first used, not with this module.
"""

from __future__ import annotations

import json
import sys
import time
from enum import IntEnum
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import typer

from devserver.errors import PROBLEM_MARK, DevserverError, Problem, problem_line, problems_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status
    from rich.text import Text


class ExitCode(IntEnum):
    """The exit codes of every command (the README's contract)."""

    OK = 0
    FAILED = 1  # anything else: a build, a host, a cloud failed; drift found
    BAD_INPUT = 2  # a problem with the input: spec, arguments, options, an artifact
    INTERRUPTED = 130  # Ctrl-C or SIGTERM, after cleaning up (128 + SIGINT, as shells report it)


@cache
def out() -> Console:
    """Results for people, on stdout (created on first use)."""
    from rich.console import Console

    return Console(highlight=False)


@cache
def err() -> Console:
    """Errors, warnings and progress, on stderr (created on first use)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class Steps:
    """What a long command (a converge, an image build) is doing, on stderr: a spinner naming the current step on a
    terminal; elsewhere (a CI log, a pipe) one line per step, printed when it ends, with how long it took — a
    spinner writes nothing there. Use as a context manager; :meth:`step` starts the next step, ending the last."""

    def __init__(self, first: str) -> None:
        self._spinner: Status | None = err().status(first, spinner="dots") if err().is_terminal else None
        self._current = first
        self._since = time.monotonic()

    def __enter__(self) -> Steps:
        if self._spinner is not None:
            self._spinner.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._spinner is not None:
            self._spinner.stop()
        else:
            self._end_current()

    def step(self, text: str) -> None:
        """`text` (Rich markup) is what runs now."""
        if self._spinner is not None:
            self._spinner.update(text)
            return
        if text == self._current:
            return
        self._end_current()
        self._current, self._since = text, time.monotonic()

    def _end_current(self) -> None:
        err().print(f"  {self._current} [dim]({time.monotonic() - self._since:.1f} s)[/]", soft_wrap=True)


def write_json(payload: object) -> None:
    """One JSON document on stdout: what every ``--json`` prints, results and errors alike."""
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def exit_code(error: DevserverError) -> ExitCode:
    return ExitCode.BAD_INPUT if error.bad_input else ExitCode.FAILED


def error_payload(error: DevserverError, context: str = "") -> dict[str, object]:
    """The ``--json`` form of `error` (see the module docstring); `context` prefixes its line."""
    prefix = f"{context}: " if context else ""
    if error.problems:
        source: dict[str, object] = {"source": error.where} if error.where else {}
        problems = [problem.as_dict() for problem in error.problems]
        return source | {"ok": False, "error": prefix + error.headline, "problems": problems}
    return {"ok": False, "error": prefix + str(error), "fix": error.fix}


def fail(error: DevserverError, json_out: bool = False, *, context: str = "") -> NoReturn:
    """Render `error` (prefixed by `context`, e.g. ``image build failed``) and exit with its class's code."""
    if json_out:
        write_json(error_payload(error, context))
    else:
        prefix = f"{context}: " if context else ""
        if error.problems:
            _print_error(problems_text(prefix + error.headline, error.problems), error.problems)
        else:
            _print_error(prefix + str(error), [])
    raise typer.Exit(exit_code(error))


def interrupted(message: str, fix: str, json_out: bool = False) -> NoReturn:
    """Ctrl-C (or SIGTERM) ended the command after its cleanup: say what was cleaned and how to go on; exit 130."""
    line = f"{message} — fix: {fix}"
    if json_out:
        write_json({"ok": False, "error": line, "fix": fix})
    else:
        _print_error(line, [])
    raise typer.Exit(ExitCode.INTERRUPTED)


def warning(problem: Problem) -> None:
    """One problem that does not stop the command (a spec warning), as a :func:`~devserver.errors.problem_line`."""
    text = _marked(problem_line(problem), [problem])
    err().print(text, soft_wrap=True)


def _print_error(body: str, problems: list[Problem]) -> None:
    """``error: `` in bold red, then `body` as it is (no markup, no wrapping); problem marks coloured."""
    from rich.text import Text

    text = Text("error", style="bold red") + Text(": ") + _marked(body, problems)
    err().print(text, soft_wrap=True)


def _marked(body: str, problems: list[Problem]) -> Text:
    """`body` with the mark of each problem line (its last lines, one per problem) coloured by severity."""
    from rich.text import Text

    text = Text(body)
    lines = body.split("\n")
    first = len(lines) - len(problems)
    offset = sum(len(line) + 1 for line in lines[:first])
    for line, problem in zip(lines[first:], problems, strict=True):
        mark = line.index(PROBLEM_MARK)
        text.stylize("red" if problem.severity == "error" else "yellow", offset + mark, offset + mark + 1)
        offset += len(line) + 1
    return text
