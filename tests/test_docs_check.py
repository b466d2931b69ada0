"""Checks of scripts/docs_check.py on tiny pages, without building the docs: the math check (KaTeX in headless Chromium)
fails on a formula that does not typeset and passes on good ones, and a hidden-source cell that prints prose is caught."""
import importlib.util, json, shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docs_check", ROOT / "scripts" / "docs_check.py")
docs_check = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(docs_check)


def page(markdown: str, outputs=()) -> str:
    "The HTML page the docs check renders for a notebook with one markdown cell and one code cell."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(markdown), nbformat.v4.new_code_cell("x", outputs=list(outputs))])
    return docs_check.html_exporter().from_notebook_node(nb)[0]


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe: pytest.skip("Chromium is not installed (apt-get install chromium); scripts/docs_check.py installs it")
    katex_cached = (docs_check.KATEX_CACHE / "node_modules" / "katex" / "dist" / "contrib" / "auto-render.min.js").exists()
    if not katex_cached and not shutil.which("npm"): pytest.skip("KaTeX is not cached and npm is missing to install it")
    docs_check.ensure_katex()
    return exe


def test_math_typesets_offline(chromium):
    shell = nbformat.v4.new_output("stream", name="stdout", text="$ pip install lightft  # costs $0 and $1\n")
    markdown_output = nbformat.v4.new_output("display_data", data={"text/markdown": "rank $r = 8$", "text/plain": "r"})
    formulas, problems = docs_check.check_math(
        page(r"Attention: $\mathrm{softmax}(QK^\top/\sqrt{d_k})V$ and $$\frac{\alpha}{r}BA$$ — not `$HOME`, nor a $5 price. 🤗",
             [shell, markdown_output]), chromium)
    assert problems == [] and formulas == 3           # dollars in code, in outputs and in a price are not math


def test_math_check_fails_on_a_broken_formula(chromium):
    formulas, problems = docs_check.check_math(page("Good $x^2$.\n\nBroken $\\frac{1}{$ here.\n\nUnknown $\\fraq{1}{2}$."), chromium)
    assert formulas == 1 and len(problems) == 2, problems
    assert problems[0].startswith(r"page.html: formula does not typeset: \fraq{1}{2} — ") and "Undefined control sequence" in problems[0]
    assert problems[1] == r"page.html: raw TeX left in the text: $\frac{1}{$"


def test_math_check_fails_when_katex_is_missing(chromium, tmp_path):
    (tmp_path / "page.html").write_text(page("$x$"))                   # no katex/ folder next to the page
    report = docs_check.math_report(chromium, (tmp_path / "page.html").as_uri())
    assert docs_check.math_problems("page.html", report) == ["page.html: KaTeX did not load, the math stays raw"]


def _notebook(tmp_path, source: str, outputs: list) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, outputs=outputs)])
    path = tmp_path / f"nb{len(list(tmp_path.iterdir()))}.ipynb"
    path.write_text(json.dumps(nb)); return path


def test_hidden_cell_that_prints_prose_fails(tmp_path):
    prose = "**Close.** On MiniLM, houlsby reaches 92.3% on the test split against full fine-tuning's 93.8%, 1.5 points behind."
    paragraph = [nbformat.v4.new_output("display_data", data={"text/markdown": prose, "text/plain": "<Markdown>"})]
    printed = [nbformat.v4.new_output("stream", name="stdout", text="The text below is written by this cell from the table above.\n")]
    bad = [_notebook(tmp_path, "#| echo: false\ndisplay(Markdown(text))", paragraph),
           _notebook(tmp_path, "#| echo: false\nprint(text)", printed)]
    assert [p.split(":")[0] for p in docs_check.hidden_prose_problems(bad)] == [f"nbs/{p.name}, cell 0" for p in bad]


def test_hidden_cells_with_tables_figures_and_visible_prose_pass(tmp_path):
    table = nbformat.v4.new_output("display_data", data={"text/markdown": "| method | test accuracy of the model on reviews |\n|---|---|\n| lora | 92.1% |",
                                                         "text/plain": "<Markdown>"})
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 700x420 with 1 Axes>"})
    log = nbformat.v4.new_output("stream", name="stdout", text="wrote results/adapters_full.json (12,345 bytes)\nepoch 1/3 loss 0.52\n")
    prose = nbformat.v4.new_output("stream", name="stdout", text="This sentence is printed by a cell whose source the reader sees.\n")
    ok = [_notebook(tmp_path, "#| echo: false\nshow(table)", [table, figure, log]), _notebook(tmp_path, "print(text)", [prose])]
    assert docs_check.hidden_prose_problems(ok) == []
