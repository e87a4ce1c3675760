"""Shell completion (`devserver --install-completion`): a real process asked as bash asks it completes commands and
the image targets from the registry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devserver import registry


def _complete(words: str) -> list[str]:
    env = {**os.environ, "_DEVSERVER_COMPLETE": "complete_bash", "COMP_WORDS": words}
    env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    result = subprocess.run(
        [sys.executable, "-m", "devserver"], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.split()


def test_completion_is_installable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devserver", "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    assert "--install-completion" in result.stdout


@pytest.mark.parametrize(
    ("words", "expected"),
    [("devserver ima", ["image"]), ("devserver image build --target ", list(registry.names()))],
)
def test_bash_completes(words: str, expected: list[str]) -> None:
    assert _complete(words) == expected
