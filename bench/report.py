"""How every bench command keeps its result: a JSON file, with its Markdown table beside it."""
import json
from pathlib import Path


def write_results(out: Path, doc: dict, table: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
