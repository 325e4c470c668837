"""The run's log file handler: when the log file cannot be written (disk full, read-only), say so once.

``logging.FileHandler`` reports every failed write with a traceback on stderr ("--- Logging error ---"); on a
full disk that is one traceback per log line, burying the one message that matters. This handler prints a
single line the first time and then stops writing to the file; the console keeps every message.
"""

from __future__ import annotations

import contextlib
import logging
import sys


class SafeFileHandler(logging.FileHandler):
    """A ``FileHandler`` that gives up on its file after the first failed write, with one line on stderr."""

    failed: bool = False

    def emit(self, record: logging.LogRecord) -> None:
        """Writes ``record`` unless an earlier write failed."""
        if self.failed:
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        """Called by logging when a write failed: one line on stderr, then the file is left alone."""
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        print(
            f"medseg: warning: the log file '{self.baseFilename}' cannot be written ({err}); "
            "messages go to the console only",
            file=sys.stderr,
        )
        with contextlib.suppress(OSError):  # closing flushes, which fails the same way
            self.close()
