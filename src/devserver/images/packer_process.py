"""Packer as a child process: its machine-readable output relayed line by line, its failures read back from its log,
and nothing it started left running.

Contract of :func:`run_streaming`: Packer runs in a process group of its own; every line it prints goes to the log,
its ``ui`` messages to ``on_line``. On any exception while it runs (KeyboardInterrupt above all) the group gets
SIGINT, as a terminal's Ctrl-C would, and :data:`INTERRUPT_GRACE_S` to clean up (stop its VM, remove its output),
after which whatever is left in the group is killed; the exception then goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

# How long Packer may take to stop its VM and remove its output after SIGINT before its process group is killed.
INTERRUPT_GRACE_S = 120.0

OnLine = Callable[[str], None]


def run_streaming(argv: list[str], cwd: Path, env: dict[str, str], log: Path, on_line: OnLine | None) -> int:
    """Run Packer, relaying its ``ui`` messages, and make sure nothing it started outlives it."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                message = _ui_message(raw)
                if message is not None and on_line is not None:
                    on_line(message)
            return proc.wait()
        except BaseException:
            _interrupt(proc, proc.stdout, out)
            raise
        finally:
            _kill_group(proc.pid)


def _interrupt(proc: subprocess.Popen[str], stdout: IO[str], out: IO[str]) -> None:
    """SIGINT to Packer (as a terminal's Ctrl-C would), then let it clean up, still draining what it prints (a full
    pipe would block it). After INTERRUPT_GRACE_S its whole process group is killed."""
    if proc.poll() is None:
        # To the whole group, as a terminal's Ctrl-C does: Packer's plugin processes expect it too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    deadline = threading.Timer(INTERRUPT_GRACE_S, _kill_group, [proc.pid])
    deadline.start()
    try:
        for raw in stdout:
            out.write(raw)
        proc.wait()
    finally:
        deadline.cancel()


def failure_reason(log: Path) -> str:
    """': <reason>' from the log: Ansible's last 'fatal:' line, else Packer's 'errored after' line, else ''."""
    fatal = errored = ""
    with contextlib.suppress(OSError):
        for raw in log.read_text(errors="replace").splitlines():
            message = (_ui_message(raw + "\n") or "").strip()
            if "fatal: [" in message:
                fatal = message
            elif "errored after" in message:
                errored = message
    reason = fatal or errored
    return f": {reason[:500]}" if reason else ""


def _ui_message(line: str) -> str | None:
    """The text of a ``-machine-readable`` ``ui`` line (timestamp,target,ui,say|message|error,TEXT)."""
    fields = line.rstrip("\n").split(",", 4)
    if len(fields) == 5 and fields[2] == "ui" and fields[3] in ("say", "message", "error"):
        text = fields[4].replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "").rstrip()
        # Packer frames a provisioner's output with lines that are only the build's name ("qemu.devserver:")
        if re.fullmatch(r"\s*(==> )?[\w-]+\.devserver:", text) or not text:
            return None
        return text
    return None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def complaint(output: str) -> str:
    """Packer's error as one line: its 'Error:' headline with the explanation that follows it."""
    lines = [line.strip() for line in output.splitlines()]
    for index, line in enumerate(lines):
        if line.startswith("Error:") or line.startswith("* "):
            detail = [
                part
                for part in lines[index + 1 : index + 12]
                if part and not part.startswith(("on ", "(source code")) and not part.startswith("Error:")
            ]
            return " ".join([line.removeprefix("Error: "), *detail])[:600]
    return (" ".join(line for line in lines if line) or "no output")[:600]
