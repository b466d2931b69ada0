"""Offline docs check: what `nbdev-docs` would publish, rendered without Quarto and opened in a browser.

Quarto cannot be installed offline, so this script
1. validates `_quarto.yml` and checks that its sidebar lists every notebook (and nothing else);
2. processes the notebooks the way nbdev does for Quarto (`nbdev.serve.proc_nbs` -> `_proc/`);
3. renders each processed notebook to static HTML with nbconvert (build/docs-check/site/);
4. serves the site on 127.0.0.1 and opens every page in headless Chromium, saving a screenshot
   (build/docs-check/screenshots/);
5. typesets the math of every page offline with KaTeX (npm package, cached in ~/.cache/lightft) in Chromium;
6. fails if a page has an error output or a traceback, a missing image, a broken link between pages, a formula
   that does not typeset or raw TeX left in its prose, and if a hidden-source (`#| echo: false`) cell prints prose.
It installs what it needs when missing: Debian's chromium, fonts-noto-color-emoji (the 🤗 of the text) and fonts-wqy-zenhei (the Chinese of the glossary), KaTeX.
Run it with `make docs-check`.
"""
from __future__ import annotations
import argparse, base64, html.parser, json, os, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, OUT = ROOT / "nbs", ROOT / "build" / "docs-check"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
KATEX_VERSION = "0.16.22"
KATEX_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightft" / f"katex-{KATEX_VERSION}"

# Runs in every page: KaTeX's auto-render typesets the prose (markdown cells and markdown outputs; <pre> and <code>
# are skipped), then the page records what it found in <body data-math-report="{json}"> for `--dump-dom` to read.
MATH_JS = r"""
document.addEventListener("DOMContentLoaded", () => {
  const report = {formulas: 0, errors: [], raw: [], loaded: typeof renderMathInElement === "function"};
  const prose = document.querySelectorAll(".jp-RenderedMarkdown");
  const delimiters = [{left: "$$", right: "$$", display: true}, {left: "$", right: "$", display: false},
    {left: "\\(", right: "\\)", display: false}, {left: "\\[", right: "\\]", display: true},
    ...["equation", "equation*", "align", "align*", "gather", "gather*"].map(
      env => ({left: `\\begin{${env}}`, right: `\\end{${env}}`, display: true}))];
  if (report.loaded) {
    // throwOnError: a formula KaTeX cannot parse (an unknown command too, which throwOnError: false would only colour)
    // goes to errorCallback, and auto-render leaves its source as text; .katex-error would mark any other failure
    const errorCallback = (message, error) => report.errors.push(
      {tex: message.replace(/^[^`]*`/, "").replace(/` with\s*$/, ""), message: String(error.message || error).replace(/\u0332/g, "")});
    for (const el of prose) renderMathInElement(el, {delimiters, throwOnError: true, errorColor: "#cc0000", errorCallback});
    report.formulas = document.querySelectorAll(".katex").length;
    for (const e of document.querySelectorAll(".katex-error")) report.errors.push({tex: e.textContent, message: e.title});
    const raw = /\$\$[\s\S]+?\$\$|\$[^\s$][^$\n]*?\$|\\[()[\]]|\\[a-zA-Z]+\{/g;
    for (const el of prose) {
      const copy = el.cloneNode(true);
      copy.querySelectorAll(".katex, .katex-error, pre, code, script, style").forEach(n => n.remove());
      for (const m of copy.textContent.matchAll(raw))
        if (!report.errors.some(e => m[0].includes(e.tex))) report.raw.push(m[0]);     // reported once, as an error
    }
  }
  document.body.dataset.mathReport = JSON.stringify(report);
});
"""
# nbconvert's lab template, with KaTeX served from the site (katex/) in place of MathJax from a CDN
PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_mathjax -%}
<link rel="stylesheet" href="katex/katex.min.css">
<script defer src="katex/katex.min.js"></script>
<script defer src="katex/contrib/auto-render.min.js"></script>
<script>{% raw %}""" + MATH_JS + """{% endraw %}</script>
{%- endblock html_head_js_mathjax -%}
"""


def sidebar_entries(node) -> list[str]:
    "All file entries of a Quarto sidebar `contents` tree."
    if isinstance(node, str): return [node]
    if isinstance(node, list): return [e for n in node for e in sidebar_entries(n)]
    if isinstance(node, dict):
        if "contents" in node: return sidebar_entries(node["contents"])
        if "href" in node: return [node["href"]]
    return []


def check_quarto_config() -> list[str]:
    import yaml
    problems = []
    link = NBS / "_quarto.yml"
    if not (link.is_symlink() and os.readlink(link) == "../_quarto.yml"):
        problems.append("nbs/_quarto.yml must be a relative symlink to ../_quarto.yml (nbdev reads that path)")
    try: cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    except Exception as e: return problems + [f"_quarto.yml does not parse: {e}"]
    listed = sidebar_entries(((cfg or {}).get("website") or {}).get("sidebar", {}).get("contents", []))
    notebooks = sorted(p.name for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    for nb in notebooks:
        if nb not in listed: problems.append(f"_quarto.yml: the sidebar does not list nbs/{nb}")
    for entry in listed:
        if not (NBS / entry).exists(): problems.append(f"_quarto.yml: the sidebar lists {entry}, which is not in nbs/")
    return problems


def _directives(source: str) -> str:
    return " ".join(l for l in source.splitlines() if l.startswith("#|"))


def doc_execution_problems() -> list[str]:
    """Cells nbdev's doc processing would execute by surprise: it runs every cell that contains an import, `#| slow` ones
    included, so a cell mixing imports with other code runs that code while the docs are built (a slow cell: a training)."""
    import ast, json
    problems = []
    for path in sorted(NBS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            flags = _directives(source)
            if cell["cell_type"] != "code" or "export" in flags: continue
            try: body = ast.parse(source).body
            except SyntaxError: continue
            is_import = lambda node: isinstance(node, (ast.Import, ast.ImportFrom))
            imports = [n for n in body if is_import(n)]
            others = [n for n in body if not is_import(n)]
            if imports and others and ("slow" in flags or "hide" not in flags):
                problems.append(f"nbs/{path.name}, cell {i}: imports and other code in one cell — nbdev's doc processing would run "
                                "the other code too (even in a slow cell); put the imports in a cell of their own")
    return problems


def _reads_as_prose(text: str) -> bool:
    "A sentence: eight or more words (numbers aside) before a full stop, outside table rows and code blocks."
    text = "\n".join(l for l in re.sub(r"```.*?```", "", text, flags=re.S).splitlines() if l.count("|") < 2)
    words = 0
    for token in text.split():
        if re.fullmatch(r"[(\"'*`_]*[A-Za-z][A-Za-z'’-]*[)\"'*`_,;:]*[.!?]?", token): words += 1
        if token[-1] in ".!?" and not re.fullmatch(r"[\d.,]+", token):
            if words >= 8: return True
            words = 0
    return False


def _output_texts(cell) -> list[str]:
    "The text a reader sees in a cell's outputs: streams, markdown, and plain text that stands for nothing richer."
    texts = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if out.get("output_type") == "stream": texts.append(out.get("text", ""))
        elif "text/markdown" in data: texts.append(data["text/markdown"])
        elif "text/plain" in data and not {"image/png", "image/svg+xml", "text/html"} & set(data): texts.append(data["text/plain"])
    return ["".join(t) if isinstance(t, list) else t for t in texts]


def hidden_prose_problems(notebooks=None) -> list[str]:
    """`#| echo: false` cells whose output is prose: the reader sees a paragraph whose source is hidden, and prose that
    code writes (f-strings over a table) reads as the course's text while no one has written it. Write it as markdown."""
    problems = []
    for path in sorted(notebooks if notebooks is not None else NBS.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(Path(path).read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or not re.search(r"^#\|\s*echo:\s*false", source, re.M): continue
            if any(_reads_as_prose(t) for t in _output_texts(cell)):
                problems.append(f"nbs/{Path(path).name}, cell {i}: a hidden-source (echo: false) cell prints prose — "
                                "write the paragraph as a markdown cell")
    return problems


def process_notebooks() -> Path:
    "Run nbdev's own notebook processing (what `nbdev-proc-nbs` does, minus its Quarto install)."
    from nbdev.quarto import refresh_quarto_yml
    from nbdev.serve import proc_nbs
    import nbdev.doclinks
    os.chdir(ROOT)
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    return Path(proc_nbs(n_workers=min(2, os.cpu_count() or 1), force=True))


def front_matter(nb) -> dict:
    import yaml
    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
            try: return yaml.safe_load(cell.source.strip().strip("-")) or {}
            except Exception: return {}
    return {}


def notebook_problems(name: str, nb) -> list[str]:
    problems = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            if out.get("output_type") == "error":
                problems.append(f"{name}: cell {i} has an error output ({out.get('ename')}: {out.get('evalue')})")
            elif "Traceback (most recent call last)" in text:
                problems.append(f"{name}: cell {i} printed a traceback")
    return problems


def html_exporter():
    "nbconvert's lab template without input prompts, `remove_input` cells without their source, and KaTeX for math."
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config(); c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = ("remove_input",)
    c.HTMLExporter.exclude_input_prompt = c.HTMLExporter.exclude_output_prompt = True
    return HTMLExporter(template_name="lab", config=c, raw_template=PAGE_TEMPLATE)


def render(proc: Path, site: Path) -> tuple[dict, list[str]]:
    "nbconvert every processed notebook to HTML; returns {notebook name: html file name} and problems found."
    import nbformat
    site.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ensure_katex(), site / "katex")
    notebooks = sorted(proc.glob("*.ipynb"))
    names, problems, parsed = {}, [], {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        names[path.name] = front_matter(nb).get("output-file") or path.with_suffix(".html").name
        parsed[path.name] = nb
        problems += notebook_problems(path.name, nb)
    cfg = __import__("nbdev").config.get_config()
    site_url = f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip("/") + "/"
    exporter = html_exporter()
    for nb_name, nb in parsed.items():
        fm = front_matter(nb)
        cells = []
        for cell in nb.cells:
            if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"):
                title = f"# {fm.get('title', nb_name)}\n\n" + (f"> {fm['description']}" if fm.get("description") else "")
                cells.append(nbformat.v4.new_markdown_cell(title)); continue
            for key in [k for k in cell if k not in ("cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments")]:
                del cell[key]                                            # nbdev's processing marks (e.g. has_sd)
            cell.metadata.pop("execution", None)                         # nbdev's timing, not valid nbformat
            if cell.cell_type == "code":
                directives = [l for l in cell.source.splitlines() if l.startswith("#|")]
                if any(re.match(r"#\|\s*echo:\s*false", l) for l in directives):
                    cell.metadata.setdefault("tags", []).append("remove_input")
                cell.source = "\n".join(l for l in cell.source.splitlines() if not l.startswith("#|"))
            cells.append(cell)
        nb.cells = cells
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": fm.get("title", nb_name)}})
        body = re.sub(r'\{target="_blank"[^}]*\}', "", body)           # Quarto link attributes
        body = body.replace(site_url, "")                                # nbdev doc links -> pages of this site
        def relink(m):
            target, anchor = m.group(2), m.group(3) or ""
            return f'{m.group(1)}{names.get(target, target)}{anchor}"'
        body = re.sub(r'(href=")([\w\-.]+\.ipynb)(#[^"]*)?"', relink, body)
        nav = " · ".join(f'<a href="{h}">{Path(n).stem}</a>' for n, h in names.items())
        body = body.replace("<body", f"<body data-nav=\"1\"", 1).replace("</body>", f"<footer><nav>{nav}</nav></footer></body>", 1)
        (site / names[nb_name]).write_text(body)
    for extra in ("styles.css",):
        if (proc / extra).exists(): shutil.copy(proc / extra, site / extra)
    return names, problems


class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.links, self.images = [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"): self.links.append(a["href"])
        if tag == "img": self.images.append(a.get("src") or "")


def link_problems(site: Path, base_url: str) -> list[str]:
    problems = []
    for page in sorted(site.glob("*.html")):
        refs = _Refs(); refs.feed(page.read_text())
        for src in refs.images:
            if src.startswith("data:image/"):
                try: base64.b64decode(src.split(",", 1)[1], validate=True)
                except Exception: problems.append(f"{page.name}: an inline image does not decode")
            elif not src or src.startswith(("http://", "https://")) and not src.startswith(base_url):
                problems.append(f"{page.name}: image {src!r} is missing or not local")
            elif not _fetch_ok(base_url + src.lstrip("/")): problems.append(f"{page.name}: image {src} is missing")
        for href in refs.links:
            if href.startswith(("#", "mailto:", "http://", "https://", "javascript:")): continue
            target = href.split("#")[0]
            if target and not _fetch_ok(base_url + target): problems.append(f"{page.name}: broken link to {href}")
    return problems


def _fetch_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as r: return r.status == 200
    except Exception: return False


def _apt_install(packages: list[str], why: str):
    if os.geteuid() != 0:
        sys.exit(f"docs check: {why} is not installed; run 'sudo apt-get install -y {' '.join(packages)}' and try again")
    print(f"docs check: installing Debian's {', '.join(packages)} (once per machine)...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe: return exe
    _apt_install(["chromium"], "Chromium")
    return shutil.which("chromium")


GLYPHS = {"1f917": ("the 🤗 emoji", "fonts-noto-color-emoji"),            # code point: what it stands for, the Debian font with it
          "4e2d": ("Chinese characters (中)", "fonts-wqy-zenhei")}         # the glossary and the chapters' 本章要点


def fonts_with(codepoint: str) -> list[str]:
    "Installed fonts with a glyph for `codepoint` (hex, e.g. '1f917'), as fontconfig — and so Chromium — sees them."
    if not shutil.which("fc-list"): return []                    # Chromium needs only the library, not the tools
    r = subprocess.run(["fc-list", f":charset={codepoint}", "family"], capture_output=True, text=True)
    return sorted(set(r.stdout.split("\n")) - {""})


def ensure_fonts() -> list[str]:
    "Install the fonts the pages need (`GLYPHS`) when missing; returns a problem for each glyph still without a font."
    missing = [cp for cp in GLYPHS if not fonts_with(cp)]
    if missing:
        _apt_install([GLYPHS[cp][1] for cp in missing] + ["fontconfig"], "Fonts for " + " and ".join(GLYPHS[cp][0] for cp in missing))
        subprocess.run(["fc-cache", "-f"], check=False, stdout=subprocess.DEVNULL)
    return [f"no installed font has {GLYPHS[cp][0]}: screenshots show missing-glyph boxes" for cp in GLYPHS if not fonts_with(cp)]


def ensure_katex() -> Path:
    "KaTeX's dist/ folder, installed from npm into a cache folder the first time (pinned version)."
    dist = KATEX_CACHE / "node_modules" / "katex" / "dist"
    if (dist / "contrib" / "auto-render.min.js").exists(): return dist
    npm = shutil.which("npm")
    if not npm: sys.exit("docs check: KaTeX is needed to typeset the math offline, and npm is missing; install Node.js and npm")
    print(f"docs check: installing KaTeX {KATEX_VERSION} from npm into {KATEX_CACHE} (once per machine)...", flush=True)
    KATEX_CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(KATEX_CACHE),
                    f"katex@{KATEX_VERSION}"], check=True, stdout=subprocess.DEVNULL)
    return dist


def math_report(chromium: str, url: str) -> dict | None:
    "Open a page, let KaTeX typeset it, and read the report its script left on <body> (None: no report)."
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=4000", "--dump-dom", url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-math-report="([^"]*)"', r.stdout)
    return json.loads(html.unescape(m.group(1))) if m else None


def math_problems(page: str, report: dict | None) -> list[str]:
    if report is None: return [f"{page}: the math check left no report (the page's script did not run)"]
    if not report["loaded"]: return [f"{page}: KaTeX did not load, the math stays raw"]
    one_line = lambda text: " ".join(text.split())
    return ([f"{page}: formula does not typeset: {one_line(e['tex'])} — {one_line(e['message'])}" for e in report["errors"]]
            + [f"{page}: raw TeX left in the text: {one_line(raw)}" for raw in report["raw"]])


def check_math(page_html: str, chromium: str | None = None) -> tuple[int, list[str]]:
    "Typeset one page made by `html_exporter` in Chromium: (formulas typeset, problems)."
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(ensure_katex(), Path(folder) / "katex")
        page = Path(folder) / "page.html"
        page.write_text(page_html)
        report = math_report(chromium or ensure_chromium(), page.as_uri())
    return (report or {}).get("formulas", 0), math_problems("page.html", report)


def screenshot(chromium: str, url: str, png: Path) -> str | None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1800",
               "--virtual-time-budget=4000", f"--screenshot={png}", url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not png.exists() or png.stat().st_size < 1000: return f"no screenshot for {url}: {r.stderr.strip()[-300:]}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-browser", action="store_true", help="skip the screenshots (link and output checks still run)")
    args = ap.parse_args(argv)
    t0 = time.time()
    problems = check_quarto_config() + doc_execution_problems() + hidden_prose_problems()
    proc = process_notebooks()
    site, shots = OUT / "site", OUT / "screenshots"
    shutil.rmtree(OUT, ignore_errors=True); shots.mkdir(parents=True)
    names, found = render(proc, site)
    problems += found
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            if _fetch_ok(base + "index.html"): break
            time.sleep(0.1)
        problems += link_problems(site, base)
        if not args.no_browser:
            chromium = ensure_chromium()
            problems += ensure_fonts()
            formulas = {}
            for html_name in sorted(set(names.values())):
                err = screenshot(chromium, base + html_name, shots / html_name.replace(".html", ".png"))
                if err: problems.append(err)
                report = math_report(chromium, base + html_name)
                problems += math_problems(html_name, report)
                formulas[Path(html_name).stem] = (report or {}).get("formulas", 0)
            print("docs check: formulas typeset with KaTeX: " + ", ".join(f"{k} {v}" for k, v in formulas.items()))
    finally:
        os.kill(server.pid, 15); server.wait(timeout=10)
    for p in problems: print(f"docs check: {p}")
    n = len(names)
    print(f"docs check: {n} pages rendered to {site.relative_to(ROOT)}, screenshots in {shots.relative_to(ROOT)}; "
          f"{len(problems)} problem(s); {time.time() - t0:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
