"""Notebooks as a class runs them: every class-length cell guards itself, so "Run All" in JupyterLab (which ignores nbdev's
flags) skips it unless LIGHTFT_SLOW=1, exactly as `nbdev-test` skips `#| slow` cells. scripts/run_notebooks.py then runs
every notebook the JupyterLab way in `make test`; these checks keep the two modes the same."""
import ast, json, re
from pathlib import Path
import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))


def code_cells(path):
    return [(i, "".join(c["source"])) for i, c in enumerate(json.loads(path.read_text())["cells"]) if c["cell_type"] == "code"]


def flags(source):
    return {l[3:].strip().split(":")[0] for l in source.splitlines() if l.startswith("#| ")}


def guarded(source):
    "True when the cell's code is one `if run_slow(...)` or `if slow_enabled():` block (imports aside)."
    body = [n for n in ast.parse(source).body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    if len(body) != 1 or not isinstance(body[0], ast.If): return False
    test = body[0].test
    return isinstance(test, ast.Call) and getattr(test.func, "id", None) in ("run_slow", "slow_enabled")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_slow_cell_skips_itself_outside_slow_mode(path):
    for i, source in code_cells(path):
        if "slow" in flags(source):
            assert guarded(source), f"{path.name}, cell {i}: a `#| slow` cell must be one `if run_slow(...):` block (see lightft.core.run_slow)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_guarded_cell_is_flagged_slow(path):
    for i, source in code_cells(path):
        if re.search(r"^if (run_slow\(|slow_enabled\(\))", source, re.M):
            assert "slow" in flags(source), f"{path.name}, cell {i}: a guarded cell must also carry `#| slow` (nbdev-test skips it then)"


def test_the_guard_is_recognised():
    assert guarded('#| slow\nif run_slow("x", minutes=1):\n    train()')
    assert not guarded("#| slow\ntrain()")
    assert not guarded('#| slow\nif run_slow("x", minutes=1):\n    train()\nwrite()')
