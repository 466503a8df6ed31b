"""Progress bars (tqdm) that stay readable in logs."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

# seconds between redraws when stderr is not a terminal (CI logs, ``> file 2>&1``): tqdm's
# default 0.1 s wrote a carriage-return update per trial, megabytes over a long tuning run
LOG_INTERVAL = 30.0


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled unless ``enabled``, redrawn at most every
    :data:`LOG_INTERVAL` seconds when stderr is not a terminal."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(iterable, disable=not enabled, **kwargs)
