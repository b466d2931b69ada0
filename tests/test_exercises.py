"""Every exercise of every chapter, both ways: the worked solution passes its check, and the student's stub (what
`make student` writes) fails it with the exercise's own message. Also: every registered checker is used by a notebook,
every notebook's exercise has a checker, and `make_student` writes runnable stubs."""
import json, re
from pathlib import Path

import pytest

from lightft.exercises import EXERCISES, ExerciseError, check, exercise_cells, load_exercises, make_student, stub_source

NBS = Path(__file__).resolve().parent.parent / "nbs"
CHECK = re.compile(r"""^check\(["'](\w+)["'], (.+)\)\s*$""")


def _source(cell): return "".join(cell["source"])


def _imports(notebook):
    "The notebook's import-only cells (how every chapter brings in what its cells use), and its module."
    out = []
    for c in notebook["cells"]:
        if c["cell_type"] != "code": continue
        lines = [l for l in _source(c).splitlines() if l.strip() and not l.startswith("#")]
        if lines and all(l.startswith(("import ", "from ")) for l in lines): out.append(_source(c))
    module = re.search(r"#\| default_exp (\S+)", "\n".join(_source(c) for c in notebook["cells"]))
    if module: out.insert(0, f"from lightft.{module.group(1)} import *")
    return out


def _exercises():
    "(notebook, name, solution source, check expression) for every exercise in the course."
    found = []
    for path in sorted(NBS.glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        for i, name in exercise_cells(notebook):
            following = [c for c in notebook["cells"][i + 1:] if c["cell_type"] == "code"][:1]
            m = CHECK.match(_source(following[0]).strip()) if following else None
            assert m and m.group(1) == name, f"{path.name}: the cell after '# solution: {name}' must be check({name!r}, ...)"
            found.append((path.name, name, _source(notebook["cells"][i]), m.group(2), _imports(notebook)))
    return found


EXERCISE_CASES = _exercises()


def test_every_chapter_with_exercises_has_at_least_three():
    per_chapter = {}
    for nb, *_ in EXERCISE_CASES: per_chapter[nb] = per_chapter.get(nb, 0) + 1
    assert per_chapter and all(n >= 3 for n in per_chapter.values()), per_chapter


@pytest.mark.parametrize("nb, name, solution, answer, imports", EXERCISE_CASES, ids=[f"{c[0]}:{c[1]}" for c in EXERCISE_CASES])
def test_the_solution_passes_and_the_stub_fails(nb, name, solution, answer, imports):
    ns = {}
    for cell in imports: exec(cell, ns)
    exec(solution, ns)
    assert check(name, eval(answer, ns), quiet=True)
    stub = {}
    for cell in imports: exec(cell, stub)
    exec(stub_source(solution), stub)
    with pytest.raises(ExerciseError) as failure: check(name, eval(answer, stub), quiet=True)
    assert str(failure.value).startswith(f"{name}: ")
    if EXERCISES[name].hint: assert EXERCISES[name].hint in str(failure.value)


def test_checkers_and_notebooks_match():
    used = {name for _, name, *_ in EXERCISE_CASES}
    registered = {n for n, e in load_exercises().items() if e.chapter != "14_exercises"}
    assert registered == used, f"checkers without an exercise: {sorted(registered - used)}; exercises without a checker: {sorted(used - registered)}"
    for nb, name, *_ in EXERCISE_CASES: assert EXERCISES[name].chapter == nb.removesuffix(".ipynb")


def test_make_student_writes_stubs_only(tmp_path):
    written = make_student(NBS, tmp_path)
    assert {p.name for p in written} == {nb for nb, *_ in EXERCISE_CASES}
    for p in written:
        copy = json.loads(p.read_text())
        original = json.loads((NBS / p.name).read_text())
        assert len(copy["cells"]) == len(original["cells"])
        for i, _ in exercise_cells(copy):
            assert "NotImplementedError" in _source(copy["cells"][i]) or "= ..." in _source(copy["cells"][i])
            assert copy["cells"][i]["outputs"] == []
