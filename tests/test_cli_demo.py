"""`hcprune demo`: the main job runs end to end and writes its table as JSON."""

import json
import subprocess
import sys


def _hcprune(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "tvm_hcprune.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_demo_writes_table(tmp_path):
    out = tmp_path / "demo.json"
    proc = _hcprune("demo", "--ratios", "0.5", "--samples", "20", "--repeat", "2",
                    "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    # one row per ratio without reconstruction, one with
    assert sorted(r["reconstruct"] for r in rows) == [False, True]
    row = next(r for r in rows if not r["reconstruct"])
    assert row["ratio"] == 0.5 and 0 < row["macs_fraction"] < 0.5
    assert row["oracle_max_abs_diff"] < 1e-4
    assert row["channels"] < row["channels_dense"]
    for key in ("ratio", "macs_fraction", "top1", "top1_dense", "agreement", "latency_ms",
                "latency_dense_ms", "reconstruct"):
        assert all(key in r for r in rows)
    assert "ratio" in proc.stdout and "MMACs" in proc.stdout
    assert all(r["nonfinite"] == 0 for r in rows) and row["nonfinite_dense"] == 0
    assert "non-finite" not in proc.stdout


def test_demo_rejects_bad_ratio(tmp_path):
    out = tmp_path / "demo.json"
    proc = _hcprune("demo", "--ratios", "1.5", "--json", str(out))
    assert proc.returncode == 2
    assert "outside [0, 1)" in proc.stderr
    assert not out.exists()


def test_demo_times_dense_alongside_each_pruned_model(monkeypatch, tmp_path):
    """Each ratio's speedup divides by a dense time taken in the same interleaved rounds as
    the pruned model (not by one dense timing taken before the loop)."""
    from tvm_hcprune.cli import demo, main

    calls = []
    real = demo._latencies_ms

    def spy(exs, x, repeat, rounds=3):
        calls.append(list(exs))
        return real(exs, x, repeat, rounds=1)

    monkeypatch.setattr(demo, "_latencies_ms", spy)
    assert main(["demo", "--ratios", "0.25,0.5", "--samples", "5", "--repeat", "1",
                 "--calibration", "0", "--json", str(tmp_path / "d.json")]) == 0
    timed = [c for c in calls if len(c) >= 2]  # the oracle's lone timing is not a figure
    assert len(timed) == 2, calls
    assert timed[0][0] is timed[1][0]  # the same dense executable, timed with each ratio
    assert timed[0][1] is not timed[1][1]
