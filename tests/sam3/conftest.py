"""Tests that import Meta's sam3 package: they run in the .tools/sam3 venv (`make test-tools`),
started by tests/unit/test_sam3_backend.py; the core venv (no sam3: its pins clash) skips them."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("sam3") else ["test_*.py"]
