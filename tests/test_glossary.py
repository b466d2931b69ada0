"""The glossary (nbs/glossary.ipynb) is data: markdown tables with one term per row — English | 中文 | definition | chapter.
These tests read the tables back and check what a reader relies on: enough terms, none listed twice (in either language),
every row complete, every Chinese term written in Chinese, every link leading to a chapter in nbs/ that exists and uses
the term, and each table in the order of the chapters. The last test feeds the same checks bad rows, so a check that
could never fail would show."""
import json, re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
GLOSSARY = NBS / "glossary.ipynb"
HEADER = ["English", "中文", "definition", "chapter"]
LINK = re.compile(r"\[[^\]]+\]\(([\w.\-]+\.ipynb)\)")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def table_rows(markdown: str) -> list[list[str]]:
    "The rows of the markdown tables in `markdown`, each a list of its stripped cells; header and separator rows left out."
    rows = []
    for line in markdown.splitlines():
        line = line.strip()
        if not line.startswith("|"): continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells == HEADER or all(re.fullmatch(r":?-{3,}:?", c) for c in cells): continue
        rows.append(cells)
    return rows


def glossary_rows(path: Path = GLOSSARY) -> list[list[str]]:
    "Every row of every table in the glossary notebook's markdown cells."
    cells = json.loads(path.read_text())["cells"]
    return [row for c in cells if c["cell_type"] == "markdown" for row in table_rows("".join(c["source"]))]


def notebook_text(path: Path) -> str:
    "What a notebook says: the source of its markdown and code cells (outputs left out)."
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] in ("markdown", "code"))


def mentions(text: str, term: str) -> bool:
    "True when `text` uses `term` as whole words: case-insensitive, a hyphen or a space alike, singular or plural."
    words = [re.escape(w) for w in re.split(r"[\s\-]+", term.lower().strip())]
    body = r"[\s\-]+".join(words)
    if term.lower().endswith("s"): body += "?"                          # "attention weights" also finds "attention weight"
    return re.search(r"(?<![a-z0-9])" + body + r"(?:s|es)?(?![a-z0-9])", text.lower()) is not None


def term_key(term: str) -> str:
    "A term as compared for duplicates: without the article's mark †, spaces collapsed, lower-case."
    return " ".join(term.replace("†", " ").split()).lower()


def duplicates(terms: list[str]) -> list[str]:
    "The terms that occur more than once (compared by `term_key`)."
    return sorted(k for k, n in Counter(term_key(t) for t in terms).items() if n > 1)


def row_problems(row: list[str], nbs: Path = NBS) -> list[str]:
    """What is wrong with one glossary row: a missing field, a Chinese term without Chinese characters, a chapter that is
    not one Markdown link to a notebook, a notebook not in `nbs`, or a chapter that never uses the English term."""
    if len(row) != len(HEADER): return [f"{row}: {len(row)} fields instead of {len(HEADER)} ({' | '.join(HEADER)})"]
    english, chinese, definition, chapter = row
    problems = [f"{english or row}: the {name} field is empty" for name, value in zip(HEADER, row) if not value]
    if problems: return problems
    if not CJK.search(chinese): problems.append(f"{english}: the Chinese term {chinese!r} has no Chinese characters")
    link = LINK.fullmatch(chapter)
    if link is None: return problems + [f"{english}: the chapter {chapter!r} is not a Markdown link to a notebook"]
    target = nbs / link.group(1)
    if not target.exists(): return problems + [f"{english}: links to {link.group(1)}, which is not a notebook in nbs/"]
    if not mentions(notebook_text(target), english): problems.append(f"{english}: the linked chapter {link.group(1)} never mentions it")
    return problems


def chapter_order(link: str) -> tuple:
    "Where a chapter link stands in the course: the home page first, then the notebooks by name (03 < 03a < 04)."
    name = LINK.fullmatch(link).group(1)
    return (name != "index.ipynb", name)


def out_of_order(rows: list[list[str]]) -> list[str]:
    "The terms of one table that come before a term of an earlier chapter (the tables follow the chapters)."
    return [f"{b[0]} ({b[3]}) after {a[0]} ({a[3]})" for a, b in zip(rows, rows[1:]) if chapter_order(b[3]) < chapter_order(a[3])]


@pytest.fixture(scope="module")
def rows():
    return glossary_rows()


def test_the_glossary_has_at_least_80_terms(rows):
    assert len(rows) >= 80, f"the glossary lists {len(rows)} terms; it should list at least 80"


def test_every_table_has_the_four_columns():
    cells = json.loads(GLOSSARY.read_text())["cells"]
    headers = [[c.strip() for c in line.strip().strip("|").split("|")] for cell in cells if cell["cell_type"] == "markdown"
               for line in "".join(cell["source"]).splitlines() if line.strip().startswith("| English")]
    assert headers and all(h == HEADER for h in headers), headers


def test_no_term_is_listed_twice(rows):
    for column, name in ((0, "English"), (1, "Chinese")):
        twice = duplicates([r[column] for r in rows if len(r) > column])
        assert not twice, f"{name} terms listed more than once: {twice}"


def test_every_row_is_complete_in_chinese_and_links_to_a_chapter_that_uses_the_term(rows):
    problems = [p for row in rows for p in row_problems(row)]
    assert not problems, "\n".join(problems)


def test_each_table_follows_the_chapters():
    cells = json.loads(GLOSSARY.read_text())["cells"]
    problems = [p for c in cells if c["cell_type"] == "markdown" for p in out_of_order(table_rows("".join(c["source"])))]
    assert not problems, problems


def test_the_checks_fail_on_bad_rows(tmp_path):
    chapter = tmp_path / "07_lora.ipynb"
    chapter.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["LoRA merges its low-rank updates."]}]}))
    good = ["LoRA", "低秩适配 (LoRA)", "A low-rank update beside a frozen weight.", "[7](07_lora.ipynb)"]
    assert row_problems(good, tmp_path) == []
    assert row_problems(["update", "更新", "d", "[7](07_lora.ipynb)"], tmp_path) == []       # "updates" counts as "update"
    bad = {"fields instead of 4": good[:3],
           "field is empty": [good[0], good[1], "", good[3]],
           "no Chinese characters": ["LoRA", "LoRA", good[2], good[3]],
           "not a Markdown link": ["LoRA", good[1], good[2], "07_lora.ipynb"],
           "not a notebook in nbs/": ["LoRA", good[1], good[2], "[12](12_outlook.ipynb)"],
           "never mentions it": ["prefix tuning", "前缀微调", good[2], good[3]]}
    for message, row in bad.items():
        problems = row_problems(row, tmp_path)
        assert len(problems) == 1 and message in problems[0], (message, problems)
    assert out_of_order([["a", "甲", "d", "[home](index.ipynb)"], ["b", "乙", "d", "[3a](03a_models.ipynb)"], ["c", "丙", "d", "[3](03_data.ipynb)"]]) \
        == ["c ([3](03_data.ipynb)) after b ([3a](03a_models.ipynb))"]
    assert duplicates(["LoRA", "adapter", "lora ", "Adapter", "rank"]) == ["adapter", "lora"]
    assert duplicates(["适配器†", "适配器"]) == ["适配器"]
    assert table_rows("| English | 中文 | definition | chapter |\n|---|---|---|---|\n| a | 甲 | b | [1](x.ipynb) |\ntext") == \
        [["a", "甲", "b", "[1](x.ipynb)"]]
    assert not mentions("rank correlation", "ran") and not mentions("the adapters", "adapter layer")
    assert mentions("Multi-Head Attention", "multi-head attention") and mentions("multi head attention", "multi-head attention")
