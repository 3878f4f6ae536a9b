"""Command line: every stage without Airflow, and ``run-all`` to chain them in one process.

Examples::

    python -m mnist_tasks run-all --source ../shared/datasets/mnist --store file:///tmp/store
    python -m mnist_tasks ingest --source https://example.org/mnist/ --store s3://bucket/mnist
    python -m mnist_tasks train --prepared file:///tmp/store/runs/r1/preprocess/prepared.npz \\
        --store file:///tmp/store --run-id r1 --preset fast_mlp

Each command logs to stderr and prints one JSON line with its result on stdout. Defaults for
``--store`` and ``--source`` come from ``MNIST_STORE`` and ``MNIST_SOURCE``. A bad argument or
input exits with status 2 and a one-line message naming the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mnist_tasks.config import PRESET_NAMES, ConfigError, pipeline_config

log = logging.getLogger("mnist_tasks")


def _json_arg(value: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@path``."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_tasks",
        description="The MNIST retraining pipeline's stages, without Airflow.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, run: bool = True) -> None:
        p.add_argument("--store", default=os.environ.get("MNIST_STORE"),
                       help="artifact store: s3://bucket/prefix, file:///path or a folder "
                            "(default: $MNIST_STORE)")
        if run:
            p.add_argument("--run-id", default=None,
                           help="run id that keys the artifacts (default: manual__<UTC time>)")

    def data(p: argparse.ArgumentParser) -> None:
        p.add_argument("--source", default=os.environ.get("MNIST_SOURCE"),
                       help="where the four IDX files are: a folder, file://, https:// mirror "
                            "prefix(es) or s3://bucket/prefix (default: $MNIST_SOURCE, else the "
                            "public mirrors)")
        p.add_argument("--checksums", default=None,
                       help="'pinned' (MNIST's payload SHA-256s, default), 'off', or @file.json "
                            "mapping file name to SHA-256")

    def training(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", choices=PRESET_NAMES, default=None)
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--batch-size", type=int, default=None)
        p.add_argument("--learning-rate", type=float, default=None)
        p.add_argument("--seed", type=int, default=None)

    def gating(p: argparse.ArgumentParser) -> None:
        p.add_argument("--min-accuracy", type=float, default=None)
        p.add_argument("--champion-margin", type=float, default=None)
        p.add_argument("--max-recall-drop", type=float, default=None)
        p.add_argument("--model-name", default=None)

    p = sub.add_parser("ingest", help="fetch, verify, parse and validate the four IDX files")
    common(p, run=False)
    data(p)

    p = sub.add_parser("preprocess", help="scale to [0, 1], seeded validation split")
    common(p)
    p.add_argument("--dataset", required=True, help="dataset_uri printed by ingest")
    training(p)

    p = sub.add_parser("train", help="train a preset on prepared data")
    common(p)
    p.add_argument("--prepared", required=True, help="prepared_uri printed by preprocess")
    training(p)

    p = sub.add_parser("evaluate", help="metrics, report and plots for a trained model")
    common(p)
    p.add_argument("--model", required=True, help="model_uri printed by train")
    p.add_argument("--prepared", required=True, help="prepared_uri printed by preprocess")
    p.add_argument("--history", default=None, help="history_uri printed by train")

    p = sub.add_parser("gate", help="PROMOTE or REJECT a trained model")
    common(p)
    p.add_argument("--evaluation", type=_json_arg, required=True,
                   help="evaluate's JSON output, inline or @file")
    p.add_argument("--prepared", required=True, help="prepared_uri printed by preprocess")
    gating(p)

    p = sub.add_parser("register", help="register a gated model as a new version")
    common(p)
    p.add_argument("--prepared", required=True, help="prepared_uri printed by preprocess")
    p.add_argument("--train", type=_json_arg, required=True, help="train's JSON output")
    p.add_argument("--evaluation", type=_json_arg, required=True, help="evaluate's JSON output")
    p.add_argument("--gate", type=_json_arg, required=True, help="gate's JSON output")
    p.add_argument("--model-name", default=None)

    p = sub.add_parser("report", help="what a run did: decision, test accuracy, version")
    common(p, run=False)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the run's id")
    which.add_argument("--latest", action="store_true", help="the most recent run in the store")

    p = sub.add_parser("run-all", help="all stages in one process (no Airflow)")
    common(p)
    data(p)
    training(p)
    gating(p)
    return parser


def _params(args: argparse.Namespace) -> dict[str, Any]:
    checksums = getattr(args, "checksums", None)
    if isinstance(checksums, str) and checksums.startswith("@"):
        checksums = _json_arg(checksums)
    names = {
        "source": "source", "store": "store", "preset": "preset", "epochs": "epochs",
        "batch_size": "batch_size", "learning_rate": "learning_rate", "seed": "seed",
        "min_accuracy": "min_accuracy", "champion_margin": "champion_margin",
        "max_recall_drop": "max_recall_drop", "model_name": "model_name",
    }
    params = {param: getattr(args, attr, None) for param, attr in names.items()}
    params["checksums"] = checksums
    return params


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the command in ``args`` and return its result dict."""
    from mnist_tasks.pipeline import Pipeline, run_summary
    from mnist_tasks.storage import open_store

    if not args.store:
        raise ConfigError("parameter 'store' is missing: pass --store or set MNIST_STORE")
    if args.command == "report":
        return run_summary(open_store(args.store), args.run_id)
    cfg = pipeline_config(_params(args))
    run_id = getattr(args, "run_id", None) or datetime.now(UTC).strftime("manual__%Y%m%dT%H%M%S")
    pipe = Pipeline(cfg, run_id)
    prepared = {"prepared_uri": getattr(args, "prepared", None)}
    if args.command == "ingest":
        return pipe.ingest()
    if args.command == "preprocess":
        return pipe.preprocess({"dataset_uri": args.dataset})
    if args.command == "train":
        return pipe.train(prepared)
    if args.command == "evaluate":
        return pipe.evaluate(prepared, {"model_uri": args.model, "history_uri": args.history})
    if args.command == "gate":
        return pipe.gate(prepared, args.evaluation)
    if args.command == "register":
        return pipe.register(prepared, args.train, args.evaluation, args.gate)
    return pipe.run_all()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = run(args)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
