"""The package surface: what ``import eddies`` exports, and that it needs no Kafka libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import eddies

# The curated public API. Adding a name to eddies/__init__.py means adding it here too, on
# purpose: this list is the contract users code against.
EXPECTED_ALL = [
    "BoundedOutOfOrderness",
    "BroadcastState",
    "Context",
    "Count",
    "EddiesError",
    "Entry",
    "InMemoryStateBackend",
    "Job",
    "KeyedBroadcastProcessFunction",
    "KeyedCoProcessFunction",
    "KeyedProcessFunction",
    "KeyedStream",
    "ListState",
    "MapState",
    "OutputTag",
    "ReducingState",
    "RocksDbStateBackend",
    "RunResult",
    "Session",
    "Sliding",
    "Stream",
    "Sum",
    "Ttl",
    "TtlConfig",
    "TtlStateBackend",
    "Tumbling",
    "ValueState",
    "Window",
    "WindowedStream",
    "errors",
    "run_local",
    "sinks",
    "sources",
    "testing",
]

PACKAGE = Path(eddies.__file__).parent


def test_all_is_pinned() -> None:
    assert eddies.__all__ == EXPECTED_ALL
    assert sorted(EXPECTED_ALL) == EXPECTED_ALL


def test_every_exported_name_exists() -> None:
    for name in eddies.__all__:
        assert getattr(eddies, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict = {}
    exec("from eddies import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL


BLOCK_KAFKA = textwrap.dedent(
    """
    import sys

    BLOCKED = ("faust", "aiokafka")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked by the test: not installed")
            return None

    sys.meta_path.insert(0, Block())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    try:
        import faust  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    import eddies
    import eddies.operators
    import eddies.state
    import eddies.testing

    class Count(eddies.KeyedProcessFunction):
        n = eddies.ValueState("n", default=0)

        def on_event(self, event, ctx):
            self.n.set(self.n.get() + 1)
            yield self.n.get()

    h = eddies.testing.Harness(Count())
    assert h.event("x", key="k") == [1]
    assert h.event("x", key="k") == [2]
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok", len(eddies.__all__))
    """
)


def test_import_works_without_faust() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_KAFKA], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(EXPECTED_ALL)}"


def _eddies_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(n for n in names if n == "eddies" or n.startswith("eddies."))
    return found


def test_state_imports_nothing_else_of_eddies() -> None:
    """state/ is usable on its own: it may import only itself and eddies.errors."""
    files = sorted((PACKAGE / "state").glob("*.py"))
    assert files
    for path in files:
        for module in _eddies_imports(path):
            assert module == "eddies.errors" or module.startswith("eddies.state"), (
                f"{path.name} imports {module}"
            )


def test_only_runtime_kafka_imports_faust() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "kafka" in path.relative_to(PACKAGE).parts[:2]:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("faust", "aiokafka"), (
                    f"{path.relative_to(PACKAGE)} imports {name}"
                )


def test_typed_marker_ships() -> None:
    assert (PACKAGE / "py.typed").exists()
