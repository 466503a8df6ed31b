"""Locate the data folders (``passes/``, ``schedules/``, bundled models).

In a wheel they live in ``tvm_hcprune/_data/<kind>``; in a checkout (editable install)
they are the top-level folders of the repository. Both are searched, wheel first.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(kind: str) -> Path:
    """Return the folder of data ``kind`` (``"passes"``, ``"schedules"``, ``"models"``)."""
    packaged = Path(str(resources.files("tvm_hcprune"))) / "_data" / kind
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / kind
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"tvm_hcprune data folder {kind!r} not found (looked in {packaged} and {checkout}); "
        "reinstall the package"
    )
