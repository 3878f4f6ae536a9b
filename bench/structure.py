"""The library's shape in figures: size, the largest modules, untyped results, environment reads.

Prints a Markdown table to compare before and after a refactoring (docs/benchmarks.md):

    .venv/bin/python bench/structure.py                  # this checkout
    .venv/bin/python bench/structure.py --rev c0b8466    # another commit (read with git show)

* lines: every line of ``mnist_tasks/*.py`` (and of the DAG glue and the plugin, apart);
* functions returning ``dict[str, Any]``, ``Any`` or a bare ``dict``: their annotations;
* environment reads inside the library: ``os.environ`` / ``os.getenv`` / ``environ`` uses;
* a trigger parameter's footprint: the files outside ``tests/`` that name ``fresh_drop_margin``
  (one form field, as a proxy for what adding one touches).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE_PARAM = "fresh_drop_margin"


def _files(rev: str | None) -> dict[str, str]:
    """Path -> text of the tracked files (at ``rev``, or in the working tree)."""
    if rev is None:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
        return {n: (ROOT / n).read_text(errors="replace") for n in names
                if (ROOT / n).is_file() and n.endswith((".py", ".md", ".html", ".yaml", ".toml"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for n in names:
        if n.endswith((".py", ".md", ".html", ".yaml", ".toml")):
            out[n] = subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout
    return out


def _untyped_returns(tree: ast.AST) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            text = ast.unparse(node.returns).replace(" ", "")
            if text in ("Any", "dict") or "dict[str,Any]" in text or "Mapping[str,Any]" in text:
                count += 1
    return count


def _environ_reads(tree: ast.AST) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            count += 1
    return count


def measure(rev: str | None) -> dict[str, object]:
    files = _files(rev)
    lib = {n: t for n, t in files.items() if n.startswith("mnist_tasks/") and n.endswith(".py")}
    trees = {n: ast.parse(t) for n, t in lib.items()}
    sizes = sorted(((len(t.splitlines()), n) for n, t in lib.items()), reverse=True)
    glue = sum(len(t.splitlines()) for n, t in files.items()
               if n.startswith(("dags/", "plugins/")) and n.endswith(".py"))
    return {
        "library lines": sum(s for s, _ in sizes),
        "library modules": len(lib),
        "largest modules": ", ".join(f"{Path(n).name} {s}" for s, n in sizes[:5]),
        "modules over 600 lines": sum(s > 600 for s, _ in sizes),
        "DAG glue + plugin lines": glue,
        "functions returning dict[str, Any] / Any": sum(_untyped_returns(t)
                                                        for t in trees.values()),
        "environment reads in the library": sum(_environ_reads(t) for t in trees.values()),
        f"files naming a trigger parameter ({PROBE_PARAM})": sum(
            PROBE_PARAM in t for n, t in files.items() if not n.startswith("tests/")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", action="append", help="a git revision (repeat to compare); "
                        "default: the working tree")
    args = parser.parse_args()
    revs: list[str | None] = list(args.rev) if args.rev else [None]
    results = [measure(r) for r in revs]
    header = ["figure", *[r or "working tree" for r in revs]]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key in results[0]:
        print("| " + " | ".join([key, *[str(r[key]) for r in results]]) + " |")


if __name__ == "__main__":
    main()
