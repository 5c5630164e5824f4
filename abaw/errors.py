"""Error types. Every user-facing failure is an `AbawError` with a one-line message."""

from __future__ import annotations

import os


class AbawError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits non-zero."""


class FormatError(AbawError):
    """Malformed input file; the message names the file and, when known, the line."""

    def __init__(self, path: str | os.PathLike, reason: str, line: int | None = None):
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")
