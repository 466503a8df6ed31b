"""Atomic output: a failure never leaves a half-written or replaced file."""

import pytest

from tvm_hcprune.utils import atomic_write, atomic_write_text


def test_atomic_write_replaces_only_on_success(tmp_path):
    dest = tmp_path / "out.json"
    atomic_write_text(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_creates_parents(tmp_path):
    dest = tmp_path / "a" / "b" / "x.txt"
    atomic_write_text(dest, "hello")
    assert dest.read_text() == "hello"


def test_atomic_write_respects_umask(tmp_path):
    import os

    dest = tmp_path / "perm.txt"
    old = os.umask(0o022)
    try:
        atomic_write_text(dest, "x")
    finally:
        os.umask(old)
    assert (dest.stat().st_mode & 0o777) == 0o644


def test_progress_bar_is_quiet_in_logs():
    """Under pytest stderr is not a terminal, as in CI logs: the bar redraws at most every
    LOG_INTERVAL seconds instead of every 0.1 s; ``enabled=False`` disables it."""
    from tvm_hcprune.utils.progress import LOG_INTERVAL, progress_bar

    bar = progress_bar(range(3), desc="x")
    assert bar.mininterval == LOG_INTERVAL and list(bar) == [0, 1, 2]
    assert progress_bar(range(3), enabled=False).disable
    assert progress_bar(total=5, mininterval=1.0).mininterval == 1.0  # an explicit value wins
