"""Configuration shared by every test folder.

The repository root goes on sys.path first, so ``tests.support`` imports however pytest was started (plain
``pytest`` does not put it there in every import mode), and the plugins below load before any test folder's
conftest:

* ``tests.support.image_builds``: artifacts made by the real image builder, once per session — built and checked by
  tests/images/test_build_e2e.py, uploaded by tests/uploads/test_built_images.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

pytest_plugins = ["tests.support.image_builds"]
