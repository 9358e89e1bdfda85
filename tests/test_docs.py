"""The README and the docs site: the site builds with warnings as errors (a broken link, a missing results
file), the README's generated blocks are what `driftseg bench readme` writes from the committed results,
the README stays a face (<= 200 lines, links that resolve), and no page types a table row of figures."""
import re
import subprocess
import sys
from pathlib import Path

from driftseg.bench import docs

REPO = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"[+-]?\d+(\.\d+)?%?")


def typed_figure_rows(markdown: str) -> list[str]:
    """Table rows with a cell that is a bare figure: such rows must come from a results file."""
    return [line for line in markdown.splitlines()
            if line.lstrip().startswith("|") and any(FIGURE.fullmatch(c.strip()) for c in line.strip("| ").split("|"))]


def test_typed_figure_rows_are_found() -> None:
    assert typed_figure_rows("| method | day |\n| --- | --- |\n| `auto` | 62.7 |\n") == ["| `auto` | 62.7 |"]
    assert typed_figure_rows("| stream | frames |\n| --- | --- |\n| `day` | source_val (seed 0) |\n") == []


def test_no_docs_page_types_a_table_of_figures() -> None:
    pages = sorted((REPO / "docs").rglob("*.md"))
    assert pages
    typed = {str(p.relative_to(REPO)): rows for p in pages if (rows := typed_figure_rows(p.read_text()))}
    assert not typed, f"tables of figures typed into the docs (include the results file instead): {typed}"


def test_site_builds_strict(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    page = (tmp_path / "site" / "results" / "online.html").read_text()
    assert "--8&lt;--" not in page and page.count("<tr>") > 10  # the tables were included, not quoted
    for html in (tmp_path / "site").rglob("*.html"):  # read offline: no script, style or font from the network
        assert not re.findall(r'<(?:script|link)[^>]*(?:src|href)="(?:https?:)?//', html.read_text()), html


def test_readme_blocks_are_current() -> None:
    text = (REPO / "README.md").read_text()
    assert docs.fill(text, {name: make(REPO / docs.RESULTS) for name, make in docs.BLOCKS.items()}) == text, (
        "README.md's generated blocks differ from experiments/results: run driftseg bench readme")


def test_readme_is_a_face_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert targets and not [t for t in targets if not (REPO / t).exists()]
