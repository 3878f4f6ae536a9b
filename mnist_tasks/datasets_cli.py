"""The command line of dataset versions and demo data (``python -m mnist_tasks data ...``)::

    python -m mnist_tasks.datasets --store file:///tmp/store list [--json]
    python -m mnist_tasks.datasets --store s3://bucket/mnist show 3f9c0a51d2e4b6a8 [--json]
    python -m mnist_tasks.datasets make-demo --mnist ../shared/datasets/mnist --out /tmp/src \\
        --increments 1 --drifted 1000
    python -m mnist_tasks.datasets add-increment --mnist ../shared/datasets/mnist \\
        --out /tmp/src --id 2026-11-27 --kind drifted

``make-demo`` lays out a source from the real MNIST (:func:`mnist_tasks.demo_data.make_demo`);
``add-increment`` lands one more, its ``_SUCCESS`` marker last. Errors print one line and exit
with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mnist_tasks.cli_common import Parser, table
from mnist_tasks.config import ConfigError, cli_location
from mnist_tasks.datasets import DatasetVersion, list_versions, load_version
from mnist_tasks.demo_data import add_increment, make_demo
from mnist_tasks.storage import Store, open_store

log = logging.getLogger(__name__)


def format_list(versions: Sequence[DatasetVersion]) -> str:
    """The ``list`` table."""
    if not versions:
        return "no dataset versions in this store"
    rows = [(v.id, v.created_at or "-", v.created_by or "-", f"{v.base.train_count:,}",
             len(v.increments), f"{v.train_images:,}", f"{v.fresh_images:,}",
             len(v.quarantined), sum(e.drift for e in v.increments) or "none")
            for v in versions]
    return table(("VERSION", "CREATED", "BY", "BASE", "INCREMENTS", "TRAIN", "FRESH",
                   "QUARANTINED", "DRIFT"), rows)


def _drift_cell(flagged: bool, stats: Mapping[str, Any]) -> str:
    names = [k for k, s in stats.items() if isinstance(s, Mapping) and s.get("flagged")]
    return ",".join(names) if flagged and names else ("yes" if flagged else "none")


def format_show(v: DatasetVersion) -> str:
    """The ``show`` text: header lines, the increments table, quarantine reasons."""
    lines = [
        f"dataset version {v.id}",
        f"created: {v.created_at or '-'} by {v.created_by or '-'}",
        f"base: {v.base.train_count:,} train, {v.base.test_count:,} test images",
        f"fresh fraction: {v.fresh_fraction:g}",
        f"totals: {v.train_images:,} training images, {v.fresh_images:,} fresh test images, "
        f"{v.base.test_count:,} benchmark test images",
        "",
    ]
    rows: list[tuple[Any, ...]] = []
    for e in v.increments:
        c = e.counts
        rows.append((e.id, "ACCEPTED", e.format, c.get("received", 0), c.get("kept", 0), e.train,
                     e.fresh, c.get("duplicates_within", 0) + c.get("duplicates_accepted", 0),
                     c.get("leaked", 0), _drift_cell(e.drift, e.drift_statistics),
                     e.payload_sha256[:12]))
    for q in v.quarantined:
        c = q.counts
        rows.append((q.id, "QUARANTINED", "-", c.get("received", 0), "-", "-", "-",
                     c.get("duplicates_within", 0) + c.get("duplicates_accepted", 0),
                     c.get("leaked", 0), "yes" if q.drift else "-",
                     (q.payload_sha256 or "-")[:12]))
    if rows:
        lines.append(table(("INCREMENT", "STATUS", "FORMAT", "RECEIVED", "KEPT", "TRAIN",
                             "FRESH", "DUPLICATES", "LEAKED", "DRIFT", "PAYLOAD"), rows))
    else:
        lines.append("no increments (the base only)")
    notes = [f"  {e.id}: {r}" for e in v.increments for r in e.reasons]
    notes += [f"  {q.id}: {r}" for q in v.quarantined for r in q.reasons]
    if notes:
        lines += ["", "reasons and warnings:", *notes]
    return "\n".join(lines)




def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m mnist_tasks.datasets",
        description="Dataset versions (base + accepted increments) and demo data.",
    )
    parser.add_argument("--store", default=os.environ.get("MNIST_STORE"),
                        help="artifact store: s3://bucket/prefix, file:///path or a folder "
                             "(default: $MNIST_STORE)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="dataset versions in the store, oldest first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("show", help="one version: base, increments, counts, drift")
    p.add_argument("version", metavar="ID", help="a dataset version id (16 hex digits)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser("make-demo", help="lay out a base plus increments from the real MNIST")
    p.add_argument("--mnist", required=True, type=Path, help="folder with the four MNIST files")
    p.add_argument("--out", required=True, type=Path, help="new source folder (outside the repo)")
    p.add_argument("--base", type=int, default=50_000, help="base training images (50000)")
    p.add_argument("--increments", type=int, default=1, help="increments to land (1)")
    p.add_argument("--size", type=int, default=5_000, help="images per increment (5000)")
    p.add_argument("--drifted", type=int, default=0,
                   help="also land demo-drifted with this many transformed images (0)")
    p.add_argument("--drift", choices=("thick", "invert", "shift"), default="thick",
                   help="the transform of demo-drifted (thick)")
    p.add_argument("--seed", type=int, default=0, help="seed of --drift shift (0)")

    p = sub.add_parser("add-increment", help="land one more increment in a source folder")
    p.add_argument("--mnist", required=True, type=Path, help="folder with the four MNIST files")
    p.add_argument("--out", required=True, type=Path, help="the source folder")
    p.add_argument("--id", required=True, dest="inc_id", help="the new increment's id")
    p.add_argument("--kind", choices=("idx", "png", "drifted"), default="idx")
    p.add_argument("--drift", choices=("thick", "invert", "shift"), default="thick",
                   help="the transform of --kind drifted (thick)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="take digits from the training (default) or test set")
    p.add_argument("--offset", type=int, default=None,
                   help="first image index (default: the last --size images of the split)")
    p.add_argument("--size", type=int, default=5_000, help="images (5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of --drift shift (0)")
    return parser


def _store(args: argparse.Namespace) -> Store:
    if not args.store:
        raise ConfigError("parameter 'store' is missing: pass --store or set MNIST_STORE")
    return open_store(cli_location(args.store, "store"))


def run(args: argparse.Namespace) -> str:
    """Run a parsed command and return what it prints."""
    # A '..' is refused in every place a command takes, as in a store (config.check_store_uri).
    for name in ("mnist", "out"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(cli_location(str(getattr(args, name)), name)))
    if args.command == "list":
        versions = list_versions(_store(args))
        if args.json:
            return json.dumps([v.to_dict() for v in versions], indent=2)
        return format_list(versions)
    if args.command == "show":
        version = load_version(_store(args), args.version)
        return json.dumps(version.to_dict(), indent=2) if args.json else format_show(version)
    if args.command == "make-demo":
        result = make_demo(args.mnist, args.out, base=args.base, increments=args.increments,
                           size=args.size, drifted=args.drifted, drift=args.drift,
                           seed=args.seed)
        return (f"wrote {result['source']}: base of {result['base']:,} training images, "
                f"increments {', '.join(result['increments']) or 'none'}; checksums in "
                f"{Path(result['source']) / 'payload-sha256.json'}")
    result = add_increment(args.mnist, args.out, args.inc_id, kind=args.kind,
                           offset=args.offset, size=args.size, split=args.split,
                           drift=args.drift, seed=args.seed)
    return (f"landed increment {result['id']} ({result['kind']}, {result['images']:,} "
            f"{result['split']} images from index {result['offset']:,}) at {result['path']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the result on stdout; an error is one line on stderr, exit 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        text = run(args)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
