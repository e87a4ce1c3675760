"""`cli.output.Steps`: where no terminal shows a spinner (a CI log, a pipe), each step gets one line with its time."""

from __future__ import annotations

import re

import pytest

from devserver.cli.output import Steps


def test_one_line_per_step_with_its_time_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with Steps("preflight: SSH, sudo, OS") as steps:
        steps.step("[cyan]devserver_base : Install the base packages[/]")
        steps.step("[cyan]devserver_base : Install the base packages[/]")  # the same step again: still one line
        steps.step("nvidia_driver : Build the module")
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r" \(\d+\.\d s\)$", "", line) for line in lines] == [
        "  preflight: SSH, sudo, OS",
        "  devserver_base : Install the base packages",
        "  nvidia_driver : Build the module",
    ]
    assert all(re.search(r" \(\d+\.\d s\)$", line) for line in lines), lines


def test_the_last_step_is_reported_when_the_command_fails(capsys: pytest.CaptureFixture[str]) -> None:
    def build() -> None:
        with Steps("starting") as steps:
            steps.step("provision: Install the driver")
            raise RuntimeError("the playbook failed")

    with pytest.raises(RuntimeError):
        build()
    assert capsys.readouterr().err.splitlines()[-1].startswith("  provision: Install the driver (")
