"""The layering: stages stand alone, nothing in mnist_tasks imports Airflow, and no test imports
a conftest module or another test file.

Read from the source with ``ast``, so imports inside functions (the lazy ones) count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mnist_tasks

PACKAGE = Path(mnist_tasks.__file__).resolve().parent
STAGES = ("ingest", "check", "preprocess", "train", "select", "evaluate", "gate", "approve",
          "register", "score", "feedback")

# The library's layers, bottom first: a module imports only modules of its own layer or of the
# layers below it, and a stage imports no other stage. docs/architecture.md draws this table
# (test_the_architecture_picture_is_the_layers_table).
LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("foundation", "configs, storage, typed results, the registry interface, statistics", (
        "config", "storage", "results", "registry_api", "drift", "settings", "cli_common",
        "alerts", "plots", "model_card")),
    ("formats", "reading what users hand us; shared artifact I/O", (
        "idx", "userfiles", "validation", "artifacts")),
    ("services", "data, models, the registry, scoring's records", (
        "base_data", "increment_files", "increments", "datasets", "watch", "landing_events",
        "monitor", "augment", "models",
        "runtime",
        "registry_read", "registry_aliases", "registry", "mlflow_rest", "registry_mlflow",
        "registries", "tracking_mlflow", "scoring_index", "scoring_batches",
        "scoring_outputs", "scoring_monitor", "labeling")),
    ("stages", "one call each from the DAG glue; never each other", STAGES),
    ("runners", "what chains stages or faces a user: run-all and the command lines", (
        "pipeline", "__main__", "registry_cli", "datasets_cli", "demo_data", "airflow_events")),
)


def imported_modules(source: str, module: str) -> set[str]:
    """Every module that ``source`` (the text of ``mnist_tasks.<module>``) imports, anywhere.

    ``from mnist_tasks import train`` counts as importing ``mnist_tasks.train`` (and
    ``mnist_tasks``); relative imports are resolved against the package.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=f"{module}.py")):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = ["mnist_tasks", *(module.split(".")[:-1])]
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def stage_imports(source: str, module: str) -> set[str]:
    """The other stage modules that ``source`` imports."""
    return {
        stage for stage in STAGES
        if stage != module and f"mnist_tasks.{stage}" in imported_modules(source, module)
    }


def _library_files() -> list[Path]:
    files = sorted(PACKAGE.glob("*.py"))
    assert {f"{stage}.py" for stage in STAGES} <= {f.name for f in files}
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_stage_module_imports_no_other_stage(stage: str) -> None:
    source = (PACKAGE / f"{stage}.py").read_text()
    assert stage_imports(source, stage) == set(), (
        f"mnist_tasks/{stage}.py imports another stage; move what they share to "
        "mnist_tasks/artifacts.py"
    )


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: p.name)
def test_library_module_never_imports_airflow(path: Path) -> None:
    mods = imported_modules(path.read_text(), path.stem)
    assert not {m for m in mods if m == "airflow" or m.startswith("airflow.")}, path


@pytest.mark.parametrize(
    "source",
    [
        "from mnist_tasks.evaluate import load_keras_model",
        "import mnist_tasks.train",
        "from mnist_tasks import idx, train as t",
        "from . import register",
        "from .gate import decide",
        "def lazy():\n    from mnist_tasks import ingest\n",
        "class C:\n    def m(self):\n        import mnist_tasks.evaluate as ev\n",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    # Each snippet, put in the preprocess module, imports exactly one other stage.
    assert len(stage_imports(source, "preprocess")) == 1, source


def test_the_check_allows_the_shared_and_helper_modules() -> None:
    source = (
        "from mnist_tasks import artifacts, config, models, storage\n"
        "from mnist_tasks.artifacts import load_prepared\n"
        "from mnist_tasks.registry import Registry\n"
        "def f():\n    from mnist_tasks import idx, plots, validation\n"
    )
    assert stage_imports(source, "train") == set()
    # A module naming itself is not a stage-to-stage import.
    assert stage_imports("from mnist_tasks.train import fit_arrays", "train") == set()


def _module_graph() -> dict[str, set[str]]:
    """mnist_tasks module -> the mnist_tasks modules it imports (lazily or not)."""
    names = {f.stem for f in _library_files()} - {"__init__", "__main__"}
    graph = {}
    for name in names:
        mods = imported_modules((PACKAGE / f"{name}.py").read_text(), name)
        graph[name] = {m for m in names if m != name and f"mnist_tasks.{m}" in mods}
    return graph


def test_no_import_cycles() -> None:
    graph = _module_graph()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


@pytest.mark.parametrize("module", ["registry", "registry_read", "registry_aliases",
                                    "registry_api"])
def test_the_registry_holds_only_the_registry(module: str) -> None:
    # The store-backed registry is one concern; its CLI and the Airflow HTTP client are others.
    mods = imported_modules((PACKAGE / f"{module}.py").read_text(), module)
    assert not mods & {"argparse", "urllib", "urllib.request", "mnist_tasks.registry_cli",
                       "mnist_tasks.airflow_events", "mnist_tasks.cli_common"}


def test_the_mlflow_backend_imports_only_the_registry_interface() -> None:
    # A backend shares registry_api alone: never the store-backed registry's modules.
    mods = imported_modules((PACKAGE / "registry_mlflow.py").read_text(), "registry_mlflow")
    registry_modules = {m for m in mods if m.startswith("mnist_tasks.registry")}
    assert {m.split(".")[1] for m in registry_modules} == {"registry_api"}
    assert "mlflow" not in {m.split(".")[0] for m in mods}  # REST, not the mlflow package


def test_the_registry_interface_needs_no_backend() -> None:
    # A second backend imports what it shares from registry_api alone, and the stages typed
    # with ModelRegistry never reach for the store-backed one.
    api = imported_modules((PACKAGE / "registry_api.py").read_text(), "registry_api")
    assert not {m for m in api if m.startswith("mnist_tasks")}
    for stage in ("check", "gate", "register"):
        mods = imported_modules((PACKAGE / f"{stage}.py").read_text(), stage)
        assert "mnist_tasks.registry" not in mods, stage


def test_no_test_imports_a_conftest_or_a_test_file() -> None:
    # Shared test code lives in plain modules (tests/helpers.py, integration/airflow_services.py):
    # pytest loads a conftest itself, and a test file imported by another runs twice.
    tests = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted(tests.rglob("*.py")):
        for module in imported_modules(path.read_text(), "tests"):
            parts = module.split(".")
            if parts[0] == "tests" and any(p == "conftest" or p.startswith("test_")
                                           for p in parts[1:]):
                found.append(f"{path.relative_to(tests)}: {module}")
    assert found == []


def _layer_of() -> dict[str, int]:
    return {module: n for n, (_, _, modules) in enumerate(LAYERS) for module in modules}


def _library_modules() -> list[str]:
    """Every module of the library; the config package counts as one."""
    names = {f.stem for f in _library_files()} - {"__init__"}
    return sorted(names | {"config"})


def _imports_of(module: str) -> set[str]:
    """The library modules ``module`` imports (lazily or not); the config package as one."""
    files = (sorted((PACKAGE / "config").glob("*.py")) if module == "config"
             else [PACKAGE / f"{module}.py"])
    found: set[str] = set()
    for path in files:
        name = f"config.{path.stem}" if module == "config" else module
        for imported in imported_modules(path.read_text(), name):
            parts = imported.split(".")
            if parts[0] == "mnist_tasks" and len(parts) > 1:
                found.add(parts[1])
    return (found & set(_library_modules())) - {module}


def test_every_library_module_has_one_layer() -> None:
    placed = [m for _, _, modules in LAYERS for m in modules]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert sorted(placed) == _library_modules(), (
        "put each new module in one layer of LAYERS (and the picture in docs/architecture.md)")


@pytest.mark.parametrize("module", _library_modules())
def test_a_module_imports_only_its_layer_and_those_below(module: str) -> None:
    layer = _layer_of()
    stages = set(STAGES)
    for imported in sorted(_imports_of(module)):
        assert layer[imported] <= layer[module], (
            f"mnist_tasks.{module} ({LAYERS[layer[module]][0]}) imports mnist_tasks.{imported} "
            f"from the layer above it ({LAYERS[layer[imported]][0]})")
        assert not (module in stages and imported in stages), (module, imported)


def layers_picture() -> str:
    """The layers as docs/architecture.md draws them (generated here, checked there)."""
    lines = []
    for n, (name, why, modules) in reversed(list(enumerate(LAYERS))):
        lines.append(f"{name} — {why}")
        row = "   "
        for module in modules:
            if len(row) + len(module) + 1 > 96:
                lines.append(row.rstrip())
                row = "   "
            row += f" {module}"
        lines.append(row.rstrip())
        if n:
            lines.append("        │ imports ▼ (never ▲)")
    return "\n".join(lines)


def test_the_architecture_picture_is_the_layers_table() -> None:
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert f"```\n{layers_picture()}\n```" in doc, (
        "docs/architecture.md's layers picture differs from LAYERS; paste this:\n"
        + layers_picture())
