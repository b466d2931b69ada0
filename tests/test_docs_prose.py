"""The results paragraphs of chapters 6 and 7 are prose written by hand (markdown cells), so nothing regenerates them
when the slow cells write new result files. This test ties every number they state to the files: each must be a value
of `nbs/results/` — directly, or as a difference, ratio or interval of those values — rounded the way the prose rounds
it. A number that is not a result (a paper's figure, a model's width) must be listed in NOT_RESULTS, with its reason.
When a slow cell rewrites a results file, this test names each sentence that has to be updated."""
import gzip, itertools, json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "nbs" / "results"
FIRST_WORDS = "**Close to full fine-tuning"          # how the results paragraphs of both chapters begin
N = {split: len(gzip.open(ROOT / "lightft" / "assets" / "sentiment" / f"{split}.jsonl.gz").read().splitlines())
     for split in ("test", "challenge")}

# numbers in the prose that are not measured here: phrases taken out of the text before it is checked
NOT_RESULTS = {
    "06_adapters.ipynb": ["within the 2 points this part",             # the course's goal for this part
                          "lost only 0.4 points",                      # Houlsby et al.'s GLUE gap
                          "24 layers of width 1,024", "6 layers of width 384",   # BERT-large and MiniLM shapes
                          "3.6% of the parameters",                    # Houlsby et al.'s budget
                          "reduction factor of 16", "bottleneck of 24",          # our preset: 384 / 16
                          "method under 1%"],                          # a category, not a measurement
    "07_lora.ipynb": ["within the 2 points, under 3% of the parameters",   # the course's goal for this part
                      "67,000 sentences"],                             # the size of SST-2's training set
}
NUMBER = r"(?<![\w.\-])(±)?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
IGNORED = [r"\$[^$]+\$", r"`[^`]*`", r"\bchapters? \d+(?: and \d+)?", r"\bTable \d+", r"\(\d{4}\)"]   # math, code, chapters, years


def _files():
    "{model: [rows]} from every results file the two chapters read, and the two benchmark files."
    adapters = json.loads((RESULTS / "adapters_full.json").read_text())["rows"]
    rows = {m: list(r) for m, r in adapters.items()}
    for folder in sorted(RESULTS.glob("*-*/")):
        if (folder / "results.json").exists():
            model = folder.name.split("-", 1)[1]
            rows.setdefault(model, []).extend(json.loads((folder / "results.json").read_text())["rows"])
    benches = [json.loads((RESULTS / f).read_text()) for f in ("adapter_step.json", "peft_step.json")]
    return rows, benches


def allowed_values() -> dict[str, set[str]]:
    "Every string the prose may state, by kind, computed from the results files."
    rows, benches = _files()
    ok = {k: set() for k in ("%", "±", "points", "reviews", "MiB", "KiB", "×", "times", "steps", "epoch", "count")}
    ok["reviews"] |= {str(n) for n in N.values()}
    for model_rows in rows.values():
        for r in model_rows:
            for split in N:
                p = r[f"{split}_accuracy"]
                ok["%"].add(f"{p:.1%}"); ok["±"].add(f"±{100 * 1.96 * (p * (1 - p) / N[split]) ** 0.5:.1f}")
            ok["%"] |= {f"{r['pct_trainable']:.2f}%", f"{r['pct_trainable']:.1f}%"}
            ok["MiB"] |= {f"{r['peak_mb']:,.0f}", f"{12 * r['trainable'] / 2**20:,.0f}"}   # gradients + Adam's 2 moments, fp32
            ok["KiB"].add(f"{r['checkpoint_bytes'] / 2**10:,.0f}"); ok["MiB"].add(f"{r['checkpoint_bytes'] / 2**20:,.0f}")   # binary units, as the tables
            ok["steps"].add(str(r["steps"])); ok["epoch"] |= {str(r["best_epoch"]), str(r["epochs"])}
            ok["count"] |= {f"{v:,}" for v in r.values() if isinstance(v, int)}
        for a, b in itertools.permutations(model_rows, 2):
            for split in N:
                gap = abs(a[f"{split}_accuracy"] - b[f"{split}_accuracy"])
                ok["points"].add(f"{100 * gap:.1f}"); ok["reviews"].add(str(round(gap * N[split])))
            ok["%"].add(f"{a['peak_mb'] / b['peak_mb']:.0%}")
            ok["times"].add(f"{a['checkpoint_bytes'] / b['checkpoint_bytes']:.0f}")
            ok["×"].add(f"{a['trainable'] / b['trainable']:.1f}")
    for bench in benches:
        ok["×"] |= {f"{v:.2f}" for v in bench["ratios"].values()}
        peaks = [m["peak_mb"] for m in bench.get("memory", {}).values()]      # measured alike, in one benchmark run
        ok["MiB"] |= {f"{a - b:,.0f}" for a, b in itertools.permutations(peaks, 2)}
        medians = bench.get("median") or bench["median_seconds_per_step"]
        ok["%"] |= {f"{a / b:.0%}" for a, b in itertools.permutations(medians.values(), 2)}
    return ok


def _kind(text: str, m: re.Match) -> str | None:
    "What a number in the prose measures, from the words around it ('4.2 and 5.0 points': both are points)."
    if m.group(1): return "±"
    before, after = text[:m.start()], text[m.end():]
    if after[:1] in ("%", "×"): return after[0]
    if re.search(r"\bepochs? (?:\d+ of )?$", before): return "epoch"
    after = re.sub(rf"^(?:\s*(?:,|and|or|to)\s*{NUMBER})+", "", after)
    for kind, pattern in [("%", r"%"), ("×", r"×"), ("points", r"\s*(?:-point|points?\b)"), ("MiB", r"\s*MiB"),
                          ("KiB", r"\s*KiB"), ("times", r"\s*times\b"), ("steps", r"\s*steps\b"),
                          ("reviews", r"\s*(?:of the \d+ )?reviews\b")]:
        if re.match(pattern, after): return kind
    return "count" if "," in m.group(2) else None


def _sentence(text: str, pos: int) -> str:
    start = max(text.rfind(". ", 0, pos), text.rfind("\n", 0, pos)) + 1
    end = text.find(". ", pos)
    return text[start:end + 1 if end >= 0 else len(text)].strip()


def stated_number_problems(prose: str, not_results: list[str], ok: dict[str, set[str]]) -> list[str]:
    "Each number of `prose` that the results do not give, with its sentence."
    text = prose
    for phrase in not_results: text = text.replace(phrase, " " * len(phrase))
    for pattern in IGNORED: text = re.sub(pattern, lambda m: " " * len(m.group(0)), text)
    problems = []
    for m in re.finditer(NUMBER, text):
        kind, value = _kind(text, m), (m.group(1) or "") + m.group(2) + (m.group(3) or "")
        if kind == "%": value += "%"
        if kind is None: problems.append(f"{value}: not a kind of number the results give — {_sentence(prose, m.start())}")
        elif value not in ok[kind]: problems.append(f"{value} ({kind}) is not in nbs/results — {_sentence(prose, m.start())}")
    return problems


def results_prose(notebook: str) -> str:
    cells = [c for c in json.loads((ROOT / "nbs" / notebook).read_text())["cells"]
             if c["cell_type"] == "markdown" and "".join(c["source"]).startswith(FIRST_WORDS)]
    assert len(cells) == 1, f"nbs/{notebook}: expected one markdown cell starting {FIRST_WORDS!r}, found {len(cells)}"
    return "".join(cells[0]["source"])


@pytest.fixture(scope="module")
def ok(): return allowed_values()


@pytest.mark.parametrize("notebook", sorted(NOT_RESULTS))
def test_every_stated_number_is_in_the_results(notebook, ok):
    prose = results_prose(notebook)
    assert len(re.findall(NUMBER, prose)) > 30, "the results paragraphs state the numbers"
    problems = stated_number_problems(prose, NOT_RESULTS[notebook], ok)
    assert not problems, f"nbs/{notebook}: numbers the results files do not give:\n" + "\n".join(problems)


@pytest.mark.parametrize("notebook", sorted(NOT_RESULTS))
def test_a_changed_number_is_caught(notebook, ok):
    prose = results_prose(notebook)
    m = re.search(r"\d+\.\d%", prose)                     # the first accuracy, made one the results do not have
    value = next(v for v in (f"{float(m.group(0)[:-1]) + k / 10:.1f}%" for k in range(1, 100)) if v not in ok["%"])
    problems = stated_number_problems(prose[:m.start()] + value + prose[m.end():], NOT_RESULTS[notebook], ok)
    assert len(problems) == 1 and problems[0].startswith(f"{value} (%) is not in nbs/results"), problems
    assert stated_number_problems(prose + " The run took 7 minutes.", NOT_RESULTS[notebook], ok)
