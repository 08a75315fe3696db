"""The one base class of every Params model: unknown keys are errors that name the close match.

Pydantic ignores unknown keys by default, so ``DemoParams(n_item=80)`` would silently build the
default 3,000-item catalog and ``{"amazon-beauty": {"rooot": ...}}`` would load the shared folder
instead of the one meant. :class:`StrictParams` forbids them (``extra="forbid"``) and, before
pydantic's own check, raises a readable error with the closest known key (``difflib``).
:func:`check_known_keys` is the same check for plain mappings (dataset options).
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, model_validator


class UnknownKeyError(ValueError):
    """An options mapping has a key no field matches; the message names the closest known key."""


def unknown_keys_problem(keys: Iterable[str], known: Iterable[str]) -> str | None:
    """``None`` when every key is known, else one line naming each unknown key and its close match."""
    known = sorted(set(known))
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return None
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    noun = "key" if len(unknown) == 1 else "keys"
    return f"unknown {noun} {', '.join(parts)}; known: {', '.join(known)}"


def check_known_keys(data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Raises :class:`UnknownKeyError` naming every key of ``data`` not in ``known`` (with its close match)."""
    problem = unknown_keys_problem(list(data), known)
    if problem:
        raise UnknownKeyError(f"{where}: {problem}")


class StrictParams(BaseModel):
    """Base of every ``*Params`` class (and so of every Dagster ``Config`` reusing one): unknown keys fail."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            check_known_keys(data, known, cls.__name__)
        return data


class LimitError(ValueError):
    """A setting that cannot make sense for the data at hand (``top_k`` above the catalog size, ...).

    Raised before any work is done, so the previous outputs stay; the message names the setting,
    its value and the limit.
    """


def check_limit(name: str, value: int | float, *, low: int | float | None = None, low_reason: str = "",
                high: int | float | None = None, high_reason: str = "") -> None:
    """Raises :class:`LimitError` unless ``low <= value <= high`` (either bound optional).

    ``check_limit("top_k", 5000, low=1, high=200, high_reason="the catalog size (items with a SID)")``
    -> ``top_k = 5000 exceeds the catalog size (items with a SID), 200; set top_k <= 200``.
    """
    if low is not None and value < low:
        why = f" ({low_reason})" if low_reason else ""
        raise LimitError(f"{name} = {value} is below its minimum {low}{why}; set {name} >= {low}")
    if high is not None and value > high:
        why = high_reason or "its maximum"
        raise LimitError(f"{name} = {value} exceeds {why}, {high}; set {name} <= {high}")
