"""bench/report.py: the one Markdown table writer every bench command's table goes through, and what a
result file records of the bare `auto`."""
import pytest

from driftseg.bench import accuracy, checkpoints, load, model, precision, speed
from driftseg.adapters.spec import RECOMMENDED
from driftseg.bench.report import aliases_run, table


def test_table_is_header_rule_and_rows() -> None:
    assert table(["a", "b c"], [["1", "`x`"], ["", "2.50"]]).splitlines() == [
        "| a | b c |", "| --- | --- |", "| 1 | `x` |", "|  | 2.50 |"]
    assert table(["only"], []) == "| only |\n| --- |"


def test_table_refuses_a_row_of_another_width() -> None:
    with pytest.raises(ValueError, match="a table row has 1 cells, the header 2"):
        table(["a", "b"], [["1"]])


def test_speed_table_goes_through_the_writer(monkeypatch) -> None:
    timings = {"source": {"median_ms": 10.0, "mean_ms": 11.0, "x_source": 1.0, "repeat_x_source": [1.0, 1.0]},
               "auto": {"median_ms": 12.0, "mean_ms": 12.5, "x_source": 1.2, "repeat_x_source": [1.15, 1.25]}}
    assert speed.markdown_table(timings).splitlines() == [
        "| method | median ms/frame | mean ms/frame | x source (median) | x source, repeats (min-max) |",
        "| --- | --- | --- | --- | --- |",
        "| `source` | 10.0 | 11.0 | 1.00 | 1.00-1.00 |",
        "| `auto` | 12.0 | 12.5 | 1.20 | 1.15-1.25 |",
    ]


@pytest.mark.parametrize("module", [accuracy, checkpoints, load, model, precision, speed])
def test_every_bench_table_uses_the_one_writer(module) -> None:
    """No command writes its own header rule: each imports report.table."""
    source = open(module.__file__).read()
    assert module.table is table and '" --- |"' not in source and "| --- |" not in source


def test_a_result_records_what_the_bare_auto_stood_for_only_where_it_ran() -> None:
    assert aliases_run(["source", "auto"]) == {"auto": RECOMMENDED} and RECOMMENDED.startswith("auto(")
    assert aliases_run(["source", "auto(m=1)+lc", "rdumb+auto"]) == {}  # written out, or inside a spec: not the alias
