"""The registry's command line: list, show, promote, roll back and download model versions.

Run as ``python -m mnist_tasks.registry`` (that module hands over to :func:`main`)::

    python -m mnist_tasks.registry --store s3://bucket/mnist list
    python -m mnist_tasks.registry --store s3://bucket/mnist list --all   # + abandoned claims
    python -m mnist_tasks.registry --store file:///tmp/store show 3 --json
    python -m mnist_tasks.registry --store file:///tmp/store promote 3
    python -m mnist_tasks.registry --store file:///tmp/store rollback
    python -m mnist_tasks.registry --store file:///tmp/store download 3 ./model-v3
    python -m mnist_tasks.registry --store s3://b/mnist rollback --notify-airflow http://airflow:8080
    python -m mnist_tasks.registry --registry mlflow+http://mlflow:5000 list   # MLflow's registry

``promote`` and ``rollback`` with ``--notify-airflow URL`` (or ``$MNIST_AIRFLOW_API_URL``) also
post an event of the registry asset (:mod:`mnist_tasks.airflow_events`), so the scoring DAG
re-scores with the new champion at once; credentials from ``$MNIST_AIRFLOW_TOKEN``, or
``$MNIST_AIRFLOW_USERNAME`` / ``$MNIST_AIRFLOW_PASSWORD``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from mnist_tasks.airflow_events import AirflowEventError, post_asset_event
from mnist_tasks.cli_common import Parser, table
from mnist_tasks.config import DEFAULT_MODEL_NAME, cli_location
from mnist_tasks.mlflow_rest import is_mlflow_location
from mnist_tasks.registries import open_registry
from mnist_tasks.registry_api import CHAMPION, AliasRecord, InvalidName, RegistryError, VersionInfo
from mnist_tasks.settings import Settings
from mnist_tasks.storage import open_store


def _fmt_acc(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _approval_cell(info: VersionInfo) -> str:
    """``OVERRIDE by alice``, ``approved by bob``, or ``-`` when no one was asked."""
    approval = info.approval
    if approval is None:
        return "-"
    outcome = "OVERRIDE" if info.overridden else str(approval.get("outcome") or "asked")
    return f"{outcome} by {approval['by']}" if approval.get("by") else outcome


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m mnist_tasks.registry",
        description="List, inspect, promote, roll back and download registered models.",
    )
    parser.add_argument("--store", default=settings.store,
                        help="store URI: s3://bucket/prefix, file:///path or a folder "
                             "(default: $MNIST_STORE)")
    parser.add_argument("--registry", default=settings.registry,
                        help="an MLflow server's registry, mlflow+http://host:port (default: "
                             "$MNIST_REGISTRY; unset: the registry in --store)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                        help=f"registered model name (default {DEFAULT_MODEL_NAME})")
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common],
                       help="every version, newest last; corrupted ones marked")
    p.add_argument("--all", action="store_true",
                   help="also claimed numbers without a version: incomplete or abandoned")
    p = sub.add_parser("show", parents=[common], help="one version's details")
    p.add_argument("version")
    notify = Parser(add_help=False)
    notify.add_argument("--notify-airflow", metavar="URL",
                        default=settings.airflow_api_url,
                        help="also post an event of the registry asset to the Airflow API at "
                             "URL, so the scoring DAG re-scores with the new champion "
                             "(default: $MNIST_AIRFLOW_API_URL; credentials: "
                             "$MNIST_AIRFLOW_TOKEN or $MNIST_AIRFLOW_USERNAME/_PASSWORD)")
    p = sub.add_parser("promote", parents=[common, notify], help="make VERSION the champion")
    p.add_argument("version")
    sub.add_parser("rollback", parents=[common, notify],
                   help="move champion back to the previous one")
    p = sub.add_parser("download", parents=[common], help="copy a version's files, verified")
    p.add_argument("version")
    p.add_argument("dest")
    return parser


def _alias_line(before: int | None, record: AliasRecord) -> str:
    was = f"was v{before}" if before is not None else "was unset"
    return f"{record.alias} -> v{record.version} ({was})"


def _run_cli(args: argparse.Namespace, settings: Settings) -> tuple[Any, str]:
    """Run one command; return (JSON result, human-readable text)."""
    location = args.registry or (args.store if is_mlflow_location(args.store or "") else None)
    if location:
        registry = open_registry(None, args.model_name, location)
    elif not args.store:
        raise InvalidName("no store given: pass --store URI or set MNIST_STORE")
    else:
        registry = open_registry(open_store(cli_location(args.store, "store")), args.model_name,
                                 None)
    if args.command == "list":
        notes = []
        try:
            champion = registry.get_alias(CHAMPION)
        except RegistryError as exc:  # list the versions anyway
            champion = None
            notes.append(f"warning: champion unknown: {exc}")
        entries = registry.scan(include_incomplete=args.all)
        rows = [["", "VERSION", "CREATED (UTC)", "TEST ACC", "GATE", "APPROVAL", "RUN ID",
                 "STATUS"]]
        for e in entries:
            if e.info is not None:
                v = e.info
                rows.append(["*" if v.version == champion else "", str(v.version),
                             v.created_at[:19].replace("T", " "), _fmt_acc(v.test_accuracy),
                             v.gate_decision or "-", _approval_cell(v), v.run_id or v.run_key,
                             e.status])
                if v.overridden and v.approval is not None:
                    notes.append(f"v{v.version} OVERRIDE of the gate's REJECT by "
                                 f"{v.approval.get('by') or '-'} at {v.approval.get('at') or '-'}"
                                 f": {' '.join(str(v.approval.get('comment')).split())}")
            else:
                rows.append(["", str(e.version), (e.claimed_at or "-")[:19].replace("T", " "),
                             "-", "-", "-", e.run_key or "-", e.status])
                notes.append(f"v{e.version} {e.status}: {e.reason}")
        if entries:
            text = "\n".join([table(rows[0], rows[1:]), "(* = champion)", *notes])
        else:
            text = "\n".join([f"no versions of {registry.model_name}", *notes])
        return [{**e.to_dict(), "champion": e.version == champion and e.status == "ok"}
                for e in entries], text
    if args.command == "show":
        info = registry.get(args.version)
        aliases = sorted(a for a, v in registry.aliases().items() if v == info.version)
        lines = [
            f"{info.model_name} v{info.version}" + (f"  [{', '.join(aliases)}]" if aliases else ""),
            f"  created       {info.created_at}",
            f"  run           {info.run_id or '-'} (key {info.run_key})",
            f"  test accuracy {_fmt_acc(info.test_accuracy)}",
            f"  gate          {info.gate_decision or '-'}",
            f"  approval      {_approval_cell(info)}" + (
                f" at {info.approval.get('at') or '-'}: {info.approval.get('comment') or '-'}"
                if info.approval else ""),
            f"  code version  {info.metadata.get('code_version') or '-'}",
            f"  model         {info.model_uri}",
            "  files:",
        ]
        lines += [f"    {name}  {e['size']} bytes  sha256 {e['sha256'][:16]}…"
                  for name, e in sorted(info.files.items())]
        return {**info.to_dict(), "aliases": aliases}, "\n".join(lines)
    if args.command in ("promote", "rollback"):
        before = registry.get_alias(CHAMPION)
        if args.command == "promote":
            record = registry.promote(args.version)
        else:
            record = registry.rollback(CHAMPION)
        line = _alias_line(before, record)
        if getattr(args, "notify_airflow", None):
            extra = {"version": record.version, "model_uri": registry.model_uri(record.version),
                     "action": args.command, "previous": before}
            try:
                event = post_asset_event(
                    args.notify_airflow, extra, token=settings.airflow_token,
                    username=settings.airflow_username, password=settings.airflow_password)
            except AirflowEventError as exc:
                raise RegistryError(f"{line}, but the asset event was not posted: {exc}; "
                                    "post it again with the same command") from None
            line += f"; asset event {event.get('id')} posted to {args.notify_airflow}"
        return record.to_dict(), line
    assert args.command == "download"
    info = registry.get(args.version)
    dest = registry.download(info.version, args.dest)
    result = {"version": info.version, "dest": str(dest), "files": sorted(info.files)}
    return result, (f"downloaded {info.model_name} v{info.version} ({len(info.files)} files, "
                    f"SHA-256 verified) to {dest}")


def main(argv: Sequence[str] | None = None) -> int:
    """The registry command line; returns the exit status (2 on any error)."""
    settings = Settings.from_environ(os.environ)
    args = _parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        result, text = _run_cli(args, settings)
    except (ValueError, OSError, RuntimeError) as exc:  # RegistryError, StorageError included
        message = " ".join(str(exc).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
