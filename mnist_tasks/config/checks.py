"""The one validator every config uses: :class:`ConfigError` and three small checks.

Each check raises a :class:`ConfigError` whose message names the parameter and its value::

    check_number("fresh_fraction", 1.0, 0.0, 1.0, hi_open=True)
    # ConfigError: parameter 'fresh_fraction' = 1.0 is invalid: must be in [0.0, 1.0)
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong type; names the parameter.

    Raised by :func:`check`, it also carries ``param``, ``value`` and ``requirement``, so an
    edge that took the value from elsewhere (an environment variable) can name that instead.
    """

    def __init__(self, message: str, param: str | None = None, value: Any = None,
                 requirement: str | None = None) -> None:
        super().__init__(message)
        self.param, self.value, self.requirement = param, value, requirement


def check(cond: bool, param: str, value: Any, requirement: str) -> None:
    """Raise a :class:`ConfigError` naming ``param`` and ``value`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"parameter {param!r} = {value!r} is invalid: {requirement}",
                          param, value, requirement)


def check_bool(param: str, value: Any) -> None:
    """``value`` must be True or False (not 1, not "yes")."""
    check(isinstance(value, bool), param, value, "must be true or false")


def check_number(param: str, value: Any, lo: float, hi: float | None = None, *,
                 integer: bool = False, lo_open: bool = False, hi_open: bool = False) -> None:
    """``value`` must be a number (an int when ``integer``; never a bool or NaN) between ``lo``
    and ``hi`` (None: no upper bound); ``lo_open``/``hi_open`` exclude the bound itself.

    The message says ``between lo and hi`` for a closed range, ``in [lo, hi)`` for a half-open
    one and ``>= lo`` without an upper bound.
    """
    kind: tuple[type, ...] = (int,) if integer else (int, float)
    check(isinstance(value, kind) and not isinstance(value, bool), param, value,
          "must be an integer" if integer else "must be a number")
    if hi is None:
        rule = f"must be {'>' if lo_open else '>='} {lo}"
    elif lo_open or hi_open:
        rule = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    else:
        rule = f"must be between {lo} and {hi}"
    ok = (lo < value if lo_open else lo <= value) and (
        hi is None or (value < hi if hi_open else value <= hi))
    check(ok and not (isinstance(value, float) and math.isnan(value)), param, value, rule)
