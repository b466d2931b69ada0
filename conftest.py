"""pytest configuration shared by tests/ and by nbval runs over nbs/.

nbdev-clean removes execution counts from notebooks; nbval treats a cell without a count as
"unrun" and then fails every cell that has outputs ("Unrun reference cell has outputs").
We give every code cell with outputs a count when nbval reads a notebook. The file on disk is untouched.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

try:
    import nbval.plugin as _nbval_plugin
except ImportError:  # nbval not installed: nothing to fix
    _nbval_plugin = None

if _nbval_plugin is not None:
    import nbformat

    class _CountingNbformat:
        "Stand-in for the `nbformat` module inside nbval whose `read` fills in execution counts."
        def __getattr__(self, name): return getattr(nbformat, name)
        @staticmethod
        def read(*args, **kwargs):
            nb = nbformat.read(*args, **kwargs)
            count = 0
            for cell in nb.cells:
                if cell.cell_type == "code":
                    count += 1
                    if cell.get("execution_count") is None and cell.get("outputs"): cell.execution_count = count
            return nb

    _nbval_plugin.nbformat = _CountingNbformat()


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow (class-length runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"): return
    skip = pytest.mark.skip(reason="slow: run with --slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords: item.add_marker(skip)
