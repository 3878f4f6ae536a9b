"""What the command lines share: the argument parser and the plain-text table.

    parser = Parser(prog="python -m mnist_tasks.datasets")
    print(table(("VERSION", "CREATED"), [("1", "2026-01-01")]))
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr and exit status 2, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, headers first; no trailing blanks."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)
