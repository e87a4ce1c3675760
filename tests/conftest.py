"""Configuration shared by every test folder.

The repository root is on sys.path (pytest's ``pythonpath`` in pyproject.toml), so ``tests`` and ``devtools`` import
however pytest was started. The plugins below load before any test folder's conftest:

* ``tests.support.image_builds``: artifacts made by the real image builder, once per session — built and checked by
  tests/images/test_build_e2e.py, uploaded by tests/uploads/test_built_images.py.
"""

from __future__ import annotations

pytest_plugins = ["tests.support.image_builds"]
