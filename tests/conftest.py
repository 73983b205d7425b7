"""pytest configuration: the pg_background_queue fixtures (node, make_cluster, conninfo)."""

import sys
from pathlib import Path

# `python -m pytest` run from the source root puts the root on sys.path, where the built
# extension pg_background_queue.so would shadow the Python package of the same name.
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "pg_background_queue.so").exists()]

pytest_plugins = ["pg_background_queue.testing.pytest_plugin"]
