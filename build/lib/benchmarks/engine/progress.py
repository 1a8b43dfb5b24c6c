"""Progress bars on a terminal only, and log lines that do not tear them.

Under Slurm or with stderr redirected to a file, a bar is hundreds of carriage-return updates in
the job's ``.err``; there the log's periodic lines (iteration, ETA) carry the same information.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm:
    """A tqdm bar shown when ``enabled`` (rank 0) and stderr is a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and on_terminal()), dynamic_ncols=True)


class TqdmHandler(logging.StreamHandler):
    """Writes records above a live bar (``tqdm.write``) instead of through it; skips ``file_only`` ones."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):  # for log.txt only (a failure's traceback)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)
