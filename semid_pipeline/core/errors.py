"""Errors for bad input: always name the file, the line and the problem."""

from __future__ import annotations

import os
from typing import Optional


class InputError(ValueError):
    """Raised when an input file is missing or malformed.

    ``str(err)`` reads ``<path>:<line>: <problem>`` (or ``<path>: <problem>`` without a line), the
    form editors and CI logs turn into links.
    """

    def __init__(self, path: str | os.PathLike, line: Optional[int], problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class CheckRefusedError(ValueError):
    """A blocking check of an asset failed: the step writes nothing, so the previous output stays current."""
