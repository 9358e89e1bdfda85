"""mkdocs hook: what the site takes from the repository itself rather than from typed text.

- The plots of experiments/results join the site under results/files/, so that the results pages show the
  committed pictures (their tables come in through pymdownx.snippets, `--8<-- "experiments/results/X.md"`).
- `<!-- driftseg:settings -->` in a page becomes the table of the service's settings, from the Settings
  class (flag, environment variable, default, description), and `<!-- driftseg:routes -->` the table of its
  routes, from the app's OpenAPI schema: both stay true when the code changes.
"""
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/files/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if "<!-- driftseg:settings -->" in markdown:
        markdown = markdown.replace("<!-- driftseg:settings -->", settings_table())
    if "<!-- driftseg:routes -->" in markdown:
        markdown = markdown.replace("<!-- driftseg:routes -->", routes_table())
    return markdown


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    from driftseg.bench.report import table
    from driftseg.service.settings import Settings, flag

    prefix = Settings.model_config.get("env_prefix", "")
    rows = []
    for name, field in Settings.model_fields.items():
        default = "(the bundled checkpoint)" if field.default_factory else field.default
        rows.append([f"`{flag(name)}`", f"`{prefix.upper()}{name.upper()}`", f"`{default}`",
                     _cell(field.description or "")])
    return table(["flag", "environment variable", "default", "what it sets"], rows)


def routes_table() -> str:
    from driftseg.bench.report import table
    from driftseg.service.app import create_app

    rows = []
    for path, operations in create_app().openapi()["paths"].items():
        for method, op in operations.items():
            codes = ", ".join(code for code in op.get("responses", {}))
            rows.append([f"`{method.upper()} {path}`", f"`{op.get('operationId', '')}`",
                         _cell(op.get("description", "")), codes])
    return table(["route", "operation id", "what it does", "answers"], rows)
