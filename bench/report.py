"""What every bench command shares: the options naming its inputs and output, its Markdown table,
how it keeps its result (a JSON file, with the table beside it), and what the bare `auto` stood for in it."""
import argparse
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from driftseg.adapters.spec import RECOMMENDED
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT


def add_common_arguments(p: argparse.ArgumentParser, checkpoint: bool = True, device: bool = True) -> None:
    """--checkpoint (unless the command takes its own), --data, --device (unless it runs no model) and --out."""
    if checkpoint:
        p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    if device:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, help="JSON file (a .md table is written beside it)")


def aliases_run(methods: Iterable[str]) -> dict[str, str]:
    """{"auto": the spec it stood for} where `methods` ran the bare `auto`, else {}: for a result file, so
    that its `auto` rows still say what they measured after the recommendation changes."""
    return {"auto": RECOMMENDED} if "auto" in methods else {}


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table: the header row, the rule, then one line per row of cells (already formatted)."""
    head = list(head)
    lines = [_row(head), "|" + " --- |" * len(head)]
    for cells in rows:
        cells = list(cells)
        if len(cells) != len(head):
            raise ValueError(f"a table row has {len(cells)} cells, the header {len(head)}: {cells}")
        lines.append(_row(cells))
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def write_results(out: Path, doc: dict, table: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
