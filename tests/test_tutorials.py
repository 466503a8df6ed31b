"""Every tutorial runs to completion (they assert their own results)."""

import os
import pathlib
import subprocess
import sys

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.py"))


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(script, tmp_path):
    # quick mode (tutorials that measure latency time fewer candidates and rounds)
    env = {**os.environ, "TVM_HCPRUNE_QUICK": "1"}
    proc = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
