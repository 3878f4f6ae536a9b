"""Command line: every stage without Airflow, and ``run-all`` to chain them in one process.

Examples::

    python -m mnist_tasks run-all --source ../shared/datasets/mnist --store file:///tmp/store
    python -m mnist_tasks ingest --source ../shared/datasets/mnist --store file:///tmp/s > i.json
    python -m mnist_tasks check --ingested @i.json --store file:///tmp/s > c.json
    python -m mnist_tasks preprocess --checked @c.json --store file:///tmp/s --run-id r1 > p.json
    python -m mnist_tasks train --prepared @p.json --store file:///tmp/s --run-id r1 > t.json
    python -m mnist_tasks train ... --candidates '[{"seed": [1, 2]}]' --candidate 1 > t1.json
    python -m mnist_tasks select --trained @t0.json --trained @t1.json --candidates ... > s.json
    python -m mnist_tasks evaluate --trained @t.json --store file:///tmp/s --run-id r1 > e.json
    python -m mnist_tasks gate --evaluation @e.json --store file:///tmp/s --run-id r1 > g.json
    python -m mnist_tasks register --gate @g.json --store file:///tmp/s --run-id r1
    python -m mnist_tasks data list --json          # = python -m mnist_tasks.datasets list ...
    python -m mnist_tasks score --store file:///tmp/s --landing /data/landing [--batch ID]
    python -m mnist_tasks score --store file:///tmp/s --rebuild-summaries
    python -m mnist_tasks feedback --store file:///tmp/s [--source /data/mnist]

The stages form a chain, as in the DAG: each command takes the previous stage's JSON output
(inline, or ``@file``) and prints its own as one JSON line on stdout; logs go to stderr.
``check`` prints ``"decision": "UNCHANGED"`` when the champion was trained on exactly these
inputs (then preprocess refuses its output); ``preprocess --ingested`` is the older name of
``--checked``. ``data ...`` runs :func:`mnist_tasks.datasets_cli.main` (dataset versions and demo
data) with the arguments that follow. The
trigger parameters' options (``--preset``, ``--epochs``, ...) are generated from
``mnist_tasks.config.TRIGGER_PARAMS``; ``--checksums`` and ``--model-name`` are the deployment
settings (defaults ``$MNIST_CHECKSUMS``, ``$MNIST_MODEL_NAME``). Defaults for ``--store`` and
``--source`` come from ``MNIST_STORE`` and ``MNIST_SOURCE``; a store, source or landing with a
``..`` segment is refused (a relative folder is taken from the current directory). A bad
argument or input exits with status 2 and one line naming the argument or the problem, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from mnist_tasks.cli_common import Parser
from mnist_tasks.config import (
    DEPLOYMENT_SETTINGS,
    TRIGGER_PARAMS,
    ConfigError,
    cli_location,
    parse_checksums,
    pipeline_config,
    read_json_file,
)
from mnist_tasks.settings import Settings

log = logging.getLogger("mnist_tasks")

# What each stage command takes (the previous stage's output) and the keys it must carry.
CHAIN: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # command: (option, the stage whose output it is, required keys)
    "check": ("--ingested", "ingest", ("dataset_uri", "dataset_version")),
    "preprocess": ("--checked", "check", ("dataset_uri", "decision")),
    "train": ("--prepared", "preprocess", ("prepared_uri",)),
    "evaluate": ("--trained", "train", ("model_uri", "prepared_uri")),
    "gate": ("--evaluation", "evaluate", ("prepared_uri", "result_uri")),
    "register": ("--gate", "gate", ("decision", "decision_uri", "evaluation_uri")),
}
# Older option names still accepted (before check, preprocess took ingest's output).
ALIASES: dict[str, tuple[str, ...]] = {"preprocess": ("--ingested",)}


def _json_value(value: str) -> Any:
    """A JSON value given inline or as ``@path``; an argparse error saying why not."""
    try:
        return read_json_file(value[1:], value) if value.startswith("@") else json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"parameter {value!r}: ")) from None


def _json_arg(value: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@path``."""
    obj = _json_value(value)
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return obj


def _stage_output(stage: str, keys: tuple[str, ...]) -> Callable[[str], dict[str, Any]]:
    def parse(value: str) -> dict[str, Any]:
        obj = _json_arg(value)
        missing = [k for k in keys if k not in obj]
        if missing:
            raise argparse.ArgumentTypeError(
                f"missing {', '.join(missing)}: give {stage}'s JSON output (inline or @file)")
        return obj

    return parse


def _checksums_arg(value: str) -> Any:
    try:
        return parse_checksums(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("parameter 'checksums': ")
                                         ) from None


def _json_list(value: str) -> Any:
    """A JSON list (or object) given inline or as ``@path``: ``--candidates '[{"seed": 1}]'``."""
    obj = _json_value(value)
    if not isinstance(obj, list | dict):
        raise argparse.ArgumentTypeError("must be a JSON list of objects")
    return obj


def _add_params(p: argparse.ArgumentParser, *groups: str) -> None:
    """The trigger parameters of ``groups``, as options: one definition in config.py."""
    types: dict[str, Callable[[str], Any]] = {"string": str, "integer": int, "number": float,
                                              "array": _json_list}
    for spec in TRIGGER_PARAMS:
        if spec.group not in groups:
            continue
        if spec.type == "boolean":  # --force / --no-force; unset: the spec's default
            p.add_argument("--" + spec.name.replace("_", "-"),
                           action=argparse.BooleanOptionalAction, default=None,
                           help=f"{spec.description} (default: {'on' if spec.default else 'off'})"
                           .replace("%", "%%"))
            continue
        default = os.environ.get(spec.env) if spec.env else None
        where = f"${spec.env}, else " if spec.env else ""
        shown = "" if spec.nullable else f" (default: {where}{spec.default!r})"
        p.add_argument(
            "--" + spec.name.replace("_", "-"), type=types[spec.type], choices=spec.enum,
            default=default, help=f"{spec.description}{shown}".replace("%", "%%"),
        )


def _add_setting(p: argparse.ArgumentParser, name: str) -> None:
    """A deployment setting, as an option defaulting to its environment variable."""
    setting = next(s for s in DEPLOYMENT_SETTINGS if s.name == name)
    p.add_argument(
        "--" + name.replace("_", "-"), default=os.environ.get(setting.env),
        type=_checksums_arg if name == "checksums" else str,
        help=f"{setting.description} (default: ${setting.env}, else {setting.default!r})"
        .replace("%", "%%"),
    )


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m mnist_tasks",
        description="The MNIST retraining pipeline's stages, without Airflow.",
    )
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *groups: str, run: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        _add_params(p, "store", *groups)
        if run:
            p.add_argument("--run-id", default=None,
                           help="run id that keys the artifacts (default: manual__<UTC time>)")
        if name in CHAIN:
            option, stage, keys = CHAIN[name]
            p.add_argument(option, *ALIASES.get(name, ()), type=_stage_output(stage, keys),
                           required=True, help=f"{stage}'s JSON output, inline or @file")
        return p

    p = command("ingest", "fetch, verify, parse and validate the four IDX files", "data",
                run=False)
    _add_setting(p, "checksums")
    p = command("check", "UNCHANGED (the champion covers these inputs) or TRAIN; the champion "
                "on new increments' fresh data", "training", "gating")
    _add_setting(p, "model_name")
    command("preprocess", "scale to [0, 1], seeded validation split, fresh data", "training")
    p = command("train", "train a preset on prepared data", "training")
    p.add_argument("--candidate", type=int, default=None,
                   help="which of --candidates to train (its index; default: the first)")
    p = command("select", "the best of the trained candidates by validation accuracy",
                "training")
    p.add_argument("--trained", type=_stage_output("train", ("model_uri", "history_uri")),
                   action="append", required=True,
                   help="a candidate's train JSON output, inline or @file; once per candidate "
                   "that trained")
    command("evaluate", "metrics, report and plots for a trained model")
    p = command("gate", "PROMOTE or REJECT a trained model", "gating")
    _add_setting(p, "model_name")
    p = command("register", "register a gated model as a new version")
    _add_setting(p, "model_name")

    p = sub.add_parser("report", help="what a run did: decision, test accuracy, version")
    _add_params(p, "store")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="the run's id")
    which.add_argument("--latest", action="store_true", help="the most recent run in the store")

    p = command("run-all", "all stages in one process (no Airflow)", "data", "training", "gating")
    _add_setting(p, "checksums")
    _add_setting(p, "model_name")

    p = sub.add_parser("score", help="score the landed batches with the champion (or "
                       "--version), as the mnist_batch_scoring DAG does, in one process")
    _add_params(p, "store")
    _add_setting(p, "model_name")
    p.add_argument("--landing", default=None,
                   help="the landing prefix (default $MNIST_SCORING_LANDING, else <store>/landing)")
    p.add_argument("--batch", action="append", default=None, metavar="ID",
                   help="score this complete batch (repeatable; default: new batches and the "
                        "most recent ones not scored with the version)")
    p.add_argument("--version", type=int, default=None,
                   help="score with this registered version instead of the champion")
    p.add_argument("--shard-size", type=int, default=None, help="images per shard")
    p.add_argument("--run-id", default=None,
                   help="the run id (default: manual__<UTC time, to the microsecond>)")
    p.add_argument("--rebuild-summaries", action="store_true",
                   help="score nothing: add every committed output to its version's summary "
                        "(what the Models page reads), e.g. for outputs older than summaries")

    p = sub.add_parser("feedback", help="merge landed labels with the scored batches' "
                       "predictions (live accuracy, alarms) and land them as increments, as "
                       "the mnist_feedback DAG does")
    _add_params(p, "store")
    _add_setting(p, "model_name")
    p.add_argument("--feedback", default=None,
                   help="the feedback prefix (default $MNIST_FEEDBACK_LANDING, else "
                        "<store>/feedback)")
    p.add_argument("--landing", default=None,
                   help="the scoring landing prefix (default $MNIST_SCORING_LANDING, else "
                        "<store>/landing)")
    p.add_argument("--source", default=None,
                   help="land the labelled images as increments in this source (default: none)")

    p = sub.add_parser("data", help="dataset versions and demo data: list, show ID, make-demo, "
                       "add-increment (python -m mnist_tasks data --help)", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="the arguments of "
                   "python -m mnist_tasks.datasets")
    return parser


def _params(args: argparse.Namespace) -> dict[str, Any]:
    """The flat params pipeline_config takes, from the options this command has."""
    names = [spec.name for spec in TRIGGER_PARAMS] + [s.name for s in DEPLOYMENT_SETTINGS]
    params = {name: getattr(args, name, None) for name in names}
    if params["store"]:
        params["store"] = cli_location(params["store"], "store")
    return params


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the command in ``args`` and return its result dict."""
    from mnist_tasks import results
    from mnist_tasks.pipeline import Pipeline, run_summary
    from mnist_tasks.storage import open_store

    if not args.store:
        raise ConfigError("parameter 'store' is missing: pass --store or set MNIST_STORE")
    # A '..' is refused wherever the command takes a place: the store, a source, a landing.
    for name in ("store", "source", "landing"):
        if getattr(args, name, None):
            setattr(args, name, cli_location(getattr(args, name), name))
    if args.command == "report":
        return run_summary(open_store(args.store), args.run_id)
    if args.command == "score":
        return _score(args)
    if args.command == "feedback":
        return _feedback(args)
    cfg = pipeline_config(_params(args))
    run_id = getattr(args, "run_id", None) or datetime.now(UTC).strftime("manual__%Y%m%dT%H%M%S")
    settings = Settings.from_environ(os.environ)
    pipe = Pipeline(cfg, run_id, registry=settings.registry,
                    mlflow_tracking=settings.mlflow_tracking)
    if args.command == "ingest":
        return results.to_json(pipe.ingest())
    if args.command == "run-all":
        return pipe.run_all()
    if args.command == "select":
        return results.to_json(pipe.select(
            [results.from_json(results.TrainResult, t) for t in args.trained]))
    option = CHAIN[args.command][0]
    previous = getattr(args, option.removeprefix("--"))
    # The previous stage's output, as its typed result (evaluate takes train's or select's).
    kind = {"check": results.IngestResult, "preprocess": results.CheckResult,
            "train": results.PreprocessResult, "gate": results.EvaluateResult,
            "register": results.GateDecision,
            "evaluate": (results.SelectResult if "chosen_candidate" in previous
                         else results.TrainResult)}[args.command]
    if args.command == "train":
        if args.candidate is not None and not 0 <= args.candidate < len(cfg.candidate_list):
            raise ConfigError(f"parameter 'candidate' = {args.candidate} is invalid: the run "
                              f"has {len(cfg.candidate_list)} candidate(s)")
        return results.to_json(pipe.train(results.from_json(kind, previous),
                                          candidate=args.candidate))
    method: Callable[[Any], Any] = getattr(pipe, args.command)
    return results.to_json(method(results.from_json(kind, previous)))


def _score(args: argparse.Namespace) -> dict[str, Any]:
    """The ``score`` command: :func:`mnist_tasks.score.score_batches` in this process."""
    import dataclasses

    from mnist_tasks import config, results, score, scoring_index
    from mnist_tasks.storage import open_store

    store_uri = _params(args)["store"]
    cfg = config.scoring_config(os.environ, store_uri)
    changes: dict[str, Any] = {"model_name": args.model_name or cfg.model_name}
    if args.landing:
        changes["landing"] = args.landing
    if args.shard_size is not None:
        changes["shard_size"] = args.shard_size
    cfg = dataclasses.replace(cfg, **changes)
    config.cli_location(cfg.landing, "landing")  # also one from MNIST_SCORING_LANDING
    if args.rebuild_summaries:
        added = scoring_index.rebuild_summaries(open_store(store_uri), cfg.model_name)
        return {"summaries": {f"v{v}": n for v, n in added.items()}}
    # A run's plan is recorded under its key and reused by a retry: two runs started within
    # the same second must not share one (microseconds in the default id).
    run_id = args.run_id or datetime.now(UTC).strftime("manual__%Y%m%dT%H%M%S%f")
    events = [{"version": args.version}] if args.version is not None else []
    return results.to_json(score.score_batches(
        cfg, open_store(store_uri), open_store(cfg.landing), config.run_key(run_id),
        batches=args.batch, events=events, run_id=run_id))


def _feedback(args: argparse.Namespace) -> dict[str, Any]:
    """The ``feedback`` command: :func:`mnist_tasks.feedback.process_pending` in this process."""
    from mnist_tasks import config
    from mnist_tasks import feedback as fb
    from mnist_tasks.storage import open_store

    store_uri = _params(args)["store"]
    cfg = config.scoring_config(os.environ, store_uri)
    landing = config.cli_location(args.landing or cfg.landing, "landing")
    feedback_uri = config.cli_location(
        args.feedback or config.feedback_landing(os.environ, store_uri), "feedback")
    model_name = args.model_name or cfg.model_name
    reports = fb.process_pending(
        fb.FeedbackConfig(model_name=model_name, registry=cfg.registry, source=args.source),
        open_store(store_uri),
        open_store(feedback_uri), open_store(landing),
        source=open_store(args.source) if args.source else None)
    return {"processed": [r.to_dict() for r in reports],
            "alarms": [r.batch for r in reports if r.status == "ALARM"]}


def _data_args(argv: list[str]) -> list[str] | None:
    """The arguments for ``mnist_tasks.datasets`` when the command is ``data`` (after any
    ``--log-level``), else None. Handled before parsing, so ``data --store URI list`` reaches
    the datasets command line as it is."""
    level: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("--log-level"):
        step = 1 if "=" in argv[i] else 2
        level = argv[i:i + step]
        i += step
    if i < len(argv) and argv[i] == "data":
        return [*level, *argv[i + 1:]]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    data = _data_args(argv)
    if data is not None:
        from mnist_tasks import datasets_cli

        return datasets_cli.main(data)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
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
