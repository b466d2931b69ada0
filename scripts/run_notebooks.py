"""Run every notebook the way a student's "Run All" in JupyterLab does, and time it.

JupyterLab knows nothing of nbdev's flags: it runs every cell, `#| slow` ones included, in a real kernel, with the
notebook's folder as the working directory. Class-length cells must therefore skip themselves (`lightft.core.run_slow`,
unless `LIGHTFT_SLOW=1`). This script checks exactly that:

- every code cell of every notebook runs in an ipykernel (nbclient), no nbdev flags, `LIGHTFT_SLOW` unset;
- no cell raises;
- each notebook finishes within the default-mode budget (`--budget`, seconds; the course's target is 90 s on a
  2-core machine with 2 notebooks at a time, and the run fails above `--limit`);
- nothing in the checkout changed (`git status` is the same before and after: a default-mode run writes nothing
  into `nbs/results/` or anywhere else tracked).

Usage: python scripts/run_notebooks.py [--workers 2] [--budget 90] [--limit 120] [nbs/01_attention.ipynb ...]
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
TIMES = ROOT / "build" / "notebook-times.json"   # read by scripts/run_tests.py for its summary


def git_status() -> str | None:
    "The porcelain `git status` of the checkout (untracked files included), or None outside a git checkout."
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def run_notebook(path: Path, timeout: int = 1200) -> tuple[float, str | None]:
    "Execute every cell of `path` in a fresh kernel, from the notebook's folder; returns (seconds, error or None)."
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            allow_errors=False, record_timing=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])   # no "running over TCP" warning per kernel
    start = time.perf_counter()
    try: client.execute()
    except (CellExecutionError, CellTimeoutError) as e:
        lines = [l for l in str(e).splitlines() if l.strip()]
        return time.perf_counter() - start, "\n".join(lines[-12:])
    except Exception as e:  # a kernel that died, a notebook that does not parse
        return time.perf_counter() - start, f"{type(e).__name__}: {e}"
    return time.perf_counter() - start, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: every nbs/*.ipynb)")
    parser.add_argument("--workers", type=int, default=2, help="notebooks run at a time (default: 2)")
    parser.add_argument("--budget", type=float, default=90, help="default-mode target per notebook, seconds (default: 90)")
    parser.add_argument("--limit", type=float, default=120,
                        help="fail a notebook slower than this, seconds (default: 120: the target plus room for a busy machine)")
    args = parser.parse_args(argv)
    paths = [Path(p).resolve() for p in args.notebooks] or sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))
    os.environ.pop("LIGHTFT_SLOW", None)            # the student's default: class-length cells skip themselves
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # one thread per notebook: two notebooks share two cores
    before = git_status()
    results = {}
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_notebook, p): p for p in paths}
        for future, path in futures.items():
            seconds, error = future.result()
            results[path] = (seconds, error)
            print(f"{'ok  ' if error is None else 'FAIL'} {path.name:<28} {seconds:6.1f} s", flush=True)
            if error: print("     " + error.replace("\n", "\n     "), flush=True)
    after = git_status()
    failed = [p for p, (_, err) in results.items() if err]
    slow = [p for p, (s, err) in results.items() if not err and s > args.limit]
    print(f"\nnotebook times, Run All, LIGHTFT_SLOW unset, {args.workers} at a time (target {args.budget:g} s, limit {args.limit:g} s):")
    for path, (seconds, error) in sorted(results.items(), key=lambda kv: -kv[1][0]):
        mark = "error" if error else ("over the limit" if seconds > args.limit else ("over the target" if seconds > args.budget else ""))
        print(f"  {path.name:<28} {seconds:6.1f} s  {mark}")
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text(json.dumps({p.name: dict(seconds=round(s, 1), error=bool(err)) for p, (s, err) in results.items()}, indent=1))
    changed = before is not None and before != after
    if changed:
        print("the run changed the checkout (a default-mode run must write nothing tracked, e.g. nothing into nbs/results/):")
        old, new = set(before.splitlines()), set(after.splitlines())
        for line in sorted(new ^ old): print("  " + line)
    ok = not failed and not slow and not changed
    print(f"notebooks: {len(results) - len(failed) - len(slow)} passed, {len(failed) + len(slow)} failed"
          + ("" if not changed else "; the checkout changed"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
