"""How often the interval DAGs run: a minutes setting as a timetable, and in words for a DAG's
description."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from mnist_tasks.config import env_number


def every(env: str, environ: Mapping[str, str] = os.environ) -> str:
    """``every 5 minutes``: how often an interval DAG runs (``env``: its minutes variable)."""
    minutes = int(env_number(environ, env))
    return "every minute" if minutes == 1 else f"every {minutes} minutes"


def interval_timetable(minutes: int) -> Any:
    """Every ``minutes`` minutes, as a cron timetable where one fits (the UI shows
    ``*/5 * * * *`` and "Every 5 minutes"; a plain interval reads ``0:05:00``), else as an
    interval."""
    from airflow.sdk import CronTriggerTimetable, DeltaTriggerTimetable

    if minutes < 60 and 60 % minutes == 0:
        return CronTriggerTimetable(f"*/{minutes} * * * *", timezone="UTC")
    if minutes % 60 == 0 and 24 % (minutes // 60) == 0:
        return CronTriggerTimetable(f"0 */{minutes // 60} * * *", timezone="UTC")
    return DeltaTriggerTimetable(timedelta(minutes=minutes))
