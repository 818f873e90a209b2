"""A progress display for waits of unknown length (model loading)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

log = logging.getLogger(__name__)


@contextmanager
def waiting(description: str) -> Iterator[Callable[[], None]]:
    """Elapsed time on a terminal (tqdm), a log line otherwise; call the yielded function on every poll."""
    if not sys.stderr.isatty():
        log.info("%s ...", description)
        yield lambda: None
        return
    with tqdm(desc=description, file=sys.stderr, leave=False, bar_format="{desc}: {elapsed}") as bar:
        yield lambda: bar.update(1)
