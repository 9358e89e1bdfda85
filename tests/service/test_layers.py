"""The service's layers: routes work with what service/deps.py gives them (the segmenter, the
stream states, the settings), never the engine's registry or store; every read of a stream state's
per-method parts and of the method spec's fields is in service/adaptation.py."""
import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
ENGINE_INSIDES = {"registry", "store", "directory", "location", "batcher", "pipeline"}
# StreamState's per-method parts and what the method spec says of its components
METHOD_PARTS = {"parts", "auto", "norm", "lc", "fda", "tent", "network", "backprop", "export_refusal", "config",
                "describe", "shift"}


def attributes(path: Path) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}


def test_routes_do_not_reach_into_the_engine():
    for path in sorted((SERVICE / "routes").glob("*.py")):
        reached = attributes(path) & ENGINE_INSIDES
        assert not reached, f"{path.name} reaches into the engine: {sorted(reached)}"
        assert "app.state" not in path.read_text(), f"{path.name}: take the engine's parts from service/deps.py"


def test_method_internals_are_read_in_one_place():
    readers = {path.name for path in SERVICE.rglob("*.py") if attributes(path) & METHOD_PARTS}
    assert readers == {"adaptation.py"}, readers
