"""What the core reports on the side reaches the Dagster log and the asset's metadata.

The pure core reports skipped or repaired input with ``logging`` warnings (``logging.getLogger(__name__)``)
and ``warnings.warn``; a record may carry counts in ``extra={"semid_count": {"items_without_metadata": 12}}``.
Without this module those went to stderr only. :func:`captured_warnings` wraps a core call inside an
asset: every such warning is forwarded to ``context.log.warning`` and collected, and
:meth:`CapturedWarnings.metadata` gives the counts for the asset's metadata (``input_warnings``: the
number of warnings, one entry per ``semid_count`` key, summed, and the messages).
"""

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List

CORE_LOGGER = "semid_pipeline"


@dataclass
class CapturedWarnings:
    messages: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)

    def add(self, message: str, counts: Dict[str, Any] | None = None) -> None:
        self.messages.append(message)
        for key, value in (counts or {}).items():
            self.counts[key] = self.counts.get(key, 0) + int(value)

    def metadata(self) -> Dict[str, Any]:
        """``input_warnings`` (always, 0 when clean), the summed counts and the messages (first 20)."""
        meta: Dict[str, Any] = {"input_warnings": len(self.messages), **self.counts}
        if self.messages:
            meta["input_warning_messages"] = "\n".join(self.messages[:20])
        return meta


class _Forward(logging.Handler):
    def __init__(self, captured: CapturedWarnings, log: Any):
        super().__init__(level=logging.WARNING)
        self.captured, self.log = captured, log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.captured.add(message, getattr(record, "semid_count", None))
        self.log.warning(message)


@contextmanager
def captured_warnings(context: Any) -> Iterator[CapturedWarnings]:
    """Forwards the core's warnings inside the block to ``context.log`` and collects them."""
    captured = CapturedWarnings()
    handler = _Forward(captured, context.log)
    logger = logging.getLogger(CORE_LOGGER)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield captured
    finally:
        logger.removeHandler(handler)
    for w in caught:
        message = f"{w.category.__name__}: {w.message}"
        captured.add(message)
        context.log.warning(message)
