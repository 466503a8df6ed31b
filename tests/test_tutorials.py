"""Every tutorial runs to completion in its quick mode (they assert their own results);
the PyTorch one needs the optional torch extra (`make test` installs it)."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.py"))
NEEDS = {"pytorch_end_to_end.py": "torch"}


@pytest.mark.parametrize("script", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(script, tmp_path):
    need = NEEDS.get(script.name)
    if need and importlib.util.find_spec(need) is None:
        pytest.skip(f"{script.name} needs {need} (the optional .[{need}] extra)")
    env = dict(os.environ, HCPRUNE_TUTORIAL_QUICK="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    print(f"{script.name}: {time.perf_counter() - t0:.1f} s")
