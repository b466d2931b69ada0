"""`make test`: every check of the project, in order, with one summary line at the end.

1. library in sync   nbdev-export must not change lightft/ (the notebooks are the source)
2. notebooks clean   nbdev-clean must not change nbs/ (files are restored afterwards)
3. notebooks         every notebook as JupyterLab's Run All runs it (scripts/run_notebooks.py): all cells, no nbdev
                     flags, LIGHTFT_SLOW unset, network blocked; timed; the checkout must be unchanged afterwards
4. output checks     nbval on the notebooks that tag cells with NBVAL_CHECK_OUTPUT
5. pytest            tests/, sockets disabled by pytest-socket
6. docs check        scripts/docs_check.py (processed notebooks -> HTML -> headless Chromium)
"""
from __future__ import annotations
import hashlib, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg", "LIGHTFT_NO_NETWORK": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests" / "netguard"), os.environ.get("PYTHONPATH")]))}


def run(*cmd, env=ENV) -> int:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env).returncode


def digest(folder: Path, pattern: str) -> dict:
    return {p.relative_to(ROOT): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob(pattern))
            if "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


def changed(before: dict, after: dict) -> list:
    return sorted(str(k) for k in set(before) | set(after) if before.get(k) != after.get(k))


def library_in_sync() -> bool:
    before = digest(ROOT / "lightft", "*.py")
    if run(BIN / "nbdev-export") != 0: return False
    diff = changed(before, digest(ROOT / "lightft", "*.py"))
    if diff: print("nbdev-export changed these files — export from the notebooks and commit the result:\n  " + "\n  ".join(diff))
    return not diff


def notebooks_clean() -> bool:
    notebooks = sorted((ROOT / "nbs").rglob("*.ipynb"))
    with tempfile.TemporaryDirectory() as backup:
        for i, nb in enumerate(notebooks): shutil.copy2(nb, Path(backup) / f"{i}.ipynb")
        before = digest(ROOT / "nbs", "*.ipynb")
        code = run(BIN / "nbdev-clean", "--fname", "nbs")
        diff = changed(before, digest(ROOT / "nbs", "*.ipynb"))
        for i, nb in enumerate(notebooks): shutil.copy2(Path(backup) / f"{i}.ipynb", nb)
    if diff: print("nbdev-clean would change these notebooks — run 'make export' (or nbdev-clean) and commit:\n  " + "\n  ".join(diff))
    return code == 0 and not diff


def notebook_tests() -> bool:
    # two notebooks at a time on a 2-core machine: one thread each, or their thread pools fight over the cores
    # (a notebook with 2 threads ran one cell in 249 s next to another busy process, 34 s alone).
    # `nbdev-test` runs the same cells minus the `#| slow` ones, which skip themselves here (tests/test_notebooks.py checks it).
    return run(BIN / "python", ROOT / "scripts" / "run_notebooks.py", "--workers", "2", env={**ENV, "OMP_NUM_THREADS": "1"}) == 0


def output_checks() -> bool:
    tagged = [p for p in sorted((ROOT / "nbs").glob("*.ipynb")) if "NBVAL_CHECK_OUTPUT" in p.read_text()]
    if not tagged: print("no notebook tags cells for output checks"); return True
    return run(BIN / "pytest", "-q", "-p", "no:socket", "--nbval-lax", "-o", "addopts=-p no:cacheprovider",
               *[p.relative_to(ROOT) for p in tagged]) == 0


def pytest() -> bool:
    return run(BIN / "pytest", "-q", "tests") == 0


def docs_check() -> bool:
    return run(BIN / "python", ROOT / "scripts" / "docs_check.py") == 0


STEPS = [("library in sync with notebooks", library_in_sync), ("notebooks clean", notebooks_clean),
         ("notebooks (Run All)", notebook_tests), ("notebook output checks", output_checks),
         ("pytest", pytest), ("docs check", docs_check)]


def main() -> int:
    results = []
    for name, step in STEPS:
        print(f"\n=== {name}", flush=True)
        t0 = time.time(); ok = step(); dt = time.time() - t0
        results.append((name, ok, dt))
        print(f"=== {name}: {'ok' if ok else 'FAILED'} ({dt:.0f} s)", flush=True)
    print()
    for name, ok, dt in results: print(f"  {'ok    ' if ok else 'FAILED'}  {name:<32} {dt:6.0f} s")
    times = ROOT / "build" / "notebook-times.json"
    if times.exists():
        import json
        print("  notebook times (Run All, 2 at a time; target 90 s): " + ", ".join(
            f"{name.removesuffix('.ipynb')} {t['seconds']:.0f} s" for name, t in sorted(json.loads(times.read_text()).items())))
    failed = sum(not ok for _, ok, _ in results)
    print(f"make test: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
