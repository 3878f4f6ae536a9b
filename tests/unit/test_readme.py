"""The README's two settings tables agree with the declarations they document.

A trigger parameter (``TRIGGER_PARAMS``) or an environment variable (``DEPLOYMENT_SETTINGS``,
``ENV_SETTINGS``, a parameter's ``env``) that is added without a README row fails here, and so
does a row for a variable that nothing declares.
"""

from __future__ import annotations

import re
from pathlib import Path

from mnist_tasks.config import DEPLOYMENT_SETTINGS, ENV_SETTINGS, PARAM_SPECS, TRIGGER_PARAMS

README = Path(__file__).resolve().parents[2] / "README.md"


def _table(section: str) -> list[list[str]]:
    """The cells of the first table under the ``## section`` heading (header rows left out)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^##? )", text, re.M | re.S)
    assert match, f"README.md has no section {section!r}"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    assert len(rows) > 2, f"README.md section {section!r} has no table"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def _declared_env() -> dict[str, str]:
    """Every declared MNIST_* variable -> its default as the README shows it."""
    declared = {s.env: s.default for s in ENV_SETTINGS}
    declared.update({s.env: s.default for s in DEPLOYMENT_SETTINGS})
    declared.update({p.env: str(p.default) for p in TRIGGER_PARAMS if p.env})
    return declared


def test_the_deployment_table_lists_exactly_the_declared_variables() -> None:
    rows = _table("On a real Airflow deployment")
    listed = {var: row for row in rows for var in re.findall(r"`(MNIST_[A-Z0-9_]+)`", row[0])}
    declared = _declared_env()
    assert not sorted(set(declared) - set(listed)), "declared but missing from README.md"
    assert not sorted(set(listed) - set(declared)), "in README.md but declared nowhere"
    for env, setting in ((s.env, s) for s in ENV_SETTINGS):
        assert setting.default in listed[env][2], f"{env}: README's default differs"


def test_the_trigger_form_table_lists_exactly_the_trigger_parameters() -> None:
    listed = {name for row in _table("The trigger form")
              for name in re.findall(r"`([a-z_]+)`", row[0])}
    assert sorted(set(PARAM_SPECS) - listed) == [], "a trigger parameter without a README row"
    assert sorted(listed - set(PARAM_SPECS)) == [], "a README row for no trigger parameter"
