"""A tiny progress-reporting protocol so long core loops can log through Dagster without importing it."""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

ProgressFn = Callable[[str], None]

_log = logging.getLogger("semid_pipeline")


def default_progress(message: str) -> None:
    _log.info(message)


class Throttle:
    """Calls ``fn`` at most once every ``every_s`` seconds (and always when ``force``)."""

    def __init__(self, fn: Optional[ProgressFn], every_s: float = 10.0):
        self.fn = fn or default_progress
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            self.fn(message)
