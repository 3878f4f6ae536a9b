"""The Models page's scored-batches section: per version, the batches the scoring DAG scored
with it, read from the per-version summaries beside the registry, rendered by the page's
template. (The page's routes and login are tested with a real api-server in
test_models_page.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from jinja2 import Environment, FileSystemLoader, select_autoescape

from mnist_tasks import score
from mnist_tasks.idx import encode_idx
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import output_prefix
from mnist_tasks.storage import LocalStore
from tests.helpers import synthetic_digits

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "mnist_models.py"


def _plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mnist_models_plugin", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_version_lists_the_batches_scored_with_it(tmp_path: Path, model_file: Path) -> None:
    store, landing = LocalStore(tmp_path / "store"), LocalStore(tmp_path / "landing")
    reg = Registry(store)
    reg.register("run-a", {"model.keras": model_file}, {})
    reg.register("run-b", {"model.keras": model_file}, {})
    reg.promote(1)
    cfg = score.ScoringConfig(landing=landing.uri)
    for batch in ("b001", "b002"):
        write_batch(landing, batch, {"a-idx3-ubyte": encode_idx(synthetic_digits(6)[0])})
    score.score_batches(cfg, store, landing, "r1")
    # A commit that never finished (no manifest, so no summary row) is not listed.
    store.write_bytes(f"{output_prefix(cfg, 'b003', 2)}/r9.0a1b2c3d/predictions.csv",
                      b"partial")

    plugin = _plugin()
    scored = plugin._scored(reg.store, reg.model_name)
    assert sorted(scored) == [1]
    assert [b["batch"] for b in scored[1]] == ["b002", "b001"]  # newest first
    assert scored[1][0]["images"] == 6 and scored[1][0]["skipped_files"] == 0

    env = Environment(loader=FileSystemLoader(PLUGIN.parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    selected = plugin._version_row(reg.get(1), 1)
    html = env.get_template("mnist_models.html").render(
        model_name="mnist-classifier", registry_uri=reg.uri, champion=1,
        rows=[selected | {"scored": 2}],
        selected=selected, selected_meta={}, lineage=None, plots=[], card_html=None,
        scored=scored[1], run=None, error=None)
    assert "Batches scored with v1" in html
    assert 'data-batch="b001"' in html and 'data-batch="b002"' in html
    assert "<th>Batches scored</th>" in html and "The newest" not in html
    assert 'src="versions/1/monitoring.png"' in html  # the batches over time, drawn
    # The plot the page serves there, from the same summary rows.
    from mnist_tasks.plots import monitoring_png

    png = monitoring_png(scored[1], [{"batch": "b001", "accuracy": 0.5, "low": 0.4,
                                      "high": 0.6, "status": "ALARM"}])
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size[0] > 600
    # A long history shows its newest batches (the page passes PAGE_BATCHES of them).
    html = env.get_template("mnist_models.html").render(
        model_name="mnist-classifier", registry_uri=reg.uri, champion=1,
        rows=[selected | {"scored": 2}], selected=selected, selected_meta={}, lineage=None,
        plots=[], card_html=None, scored=scored[1][:1], scored_total=2, run=None, error=None)
    assert 'data-batch="b002"' in html and 'data-batch="b001"' not in html
    assert "The newest 1 of 2 batches" in html and plugin.PAGE_BATCHES == 500


def test_a_mirrored_run_links_to_its_mlflow_run(tmp_path: Path) -> None:
    """A run the tracking mirror logged (its summary says where) links to MLflow's page of
    it, in the runs table and from the version it registered; a run not mirrored does not."""
    import json

    store = LocalStore(tmp_path / "store")
    reg = Registry(store)
    info = reg.register("run-a", {"model.keras": b"weights"}, {"run": {"run_id": "run-a"}})
    url = "http://mlflow.example:5000/#/experiments/3/runs/abc123"
    store.write_bytes("runs/run-a/summary.json", json.dumps({
        "run_id": "run-a", "dag_id": "mnist_training", "decision": "PROMOTE",
        "updated_at": "2026-12-01T00:00:00", "mlflow_experiment_id": "3",
        "mlflow_tracking": "mlflow+http://mlflow.example:5000", "mlflow_run_id": "abc123",
    }).encode())
    store.write_bytes("runs/run-b/summary.json", json.dumps({
        "run_id": "run-b", "decision": "REJECT", "updated_at": "2026-12-02T00:00:00"}).encode())

    plugin = _plugin()
    runs = {r["run_id"]: r for r in plugin._runs(store, {"run-a": 1})}
    assert runs["run-a"]["mlflow_url"] == url and runs["run-b"]["mlflow_url"] is None
    assert plugin._mlflow_of(store, info.run_key) == url  # a version older than the table
    selected = plugin._version_row(info, 1, url)
    env = Environment(loader=FileSystemLoader(PLUGIN.parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("mnist_models.html").render(
        model_name="mnist-classifier", registry_uri=reg.uri, champion=1, rows=[selected],
        runs=list(runs.values()), selected=selected, selected_meta={}, lineage=None, plots=[],
        card_html=None, scored=[], run=None, error=None)
    link = f'<a class="mlflow" href="{url}" target="_blank"'
    assert html.count(link) == 3  # the version's row, its detail, the run's row
    assert html.count('class="mlflow"') == 3  # run-b, not mirrored, has none
