import atexit
import os
import shutil
import tempfile

from tvm_hcprune.hardware.host import host_physical_cores

# TVM's thread pool: the physical cores, shared out between the pytest-xdist workers. Two
# workers with a pool of 2 threads each on 2 cores spin against each other: a table timed
# the small test model at 4 ms instead of 0.056 ms, and tests whose plans follow the
# timings failed. One thread per worker there. (TVM reads the variable when its pool starts,
# at the first parallel kernel call.)
# A value the user set before pytest started is kept (the workers inherit the controller's
# environment, so the controller records it first).
os.environ.setdefault("HCPRUNE_TEST_USER_THREADS", os.environ.get("TVM_NUM_THREADS", ""))
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ["TVM_NUM_THREADS"] = (os.environ["HCPRUNE_TEST_USER_THREADS"]
                                 or str(max(1, host_physical_cores() // _WORKERS)))
# the latency cache: one per test process, removed at its end; never the user's
# ~/.cache/tvm_hcprune (every run starts as on a fresh machine, and no two pytest-xdist
# workers rewrite one cache file). Tests that check the cache point it at their tmp_path.
_LATENCY_CACHE = tempfile.mkdtemp(prefix="hcprune-test-cache-")
os.environ["TVM_HCPRUNE_CACHE"] = _LATENCY_CACHE
atexit.register(shutil.rmtree, _LATENCY_CACHE, True)

import pytest  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

# tvm_hcprune's passes: their output must be well formed (TVM's relax tests run
# WellFormedInstrument around every pass; TVM's own lowering passes are left out here). Every
# pass tvm_hcprune defines is listed here or in NOT_CHECKED with the reason
# (tests/test_architecture.py checks both against the sources and the preset registry).
OUR_RELAX_PASSES = frozenset({
    "ApplyPrunePlan", "BlockChannelLayout", "FoldBatchNorm", "NormalizeImport",
    "PruneChannels", "Reconstruct", "ReestimateBatchNorm", "PackWeightsForCPU",
    "OffloadToVTA", "VTAQuantize", "UseBlockSparse", "FastMath", "SparsifyBlocks",
    "HCPruneApplyDatabase", "ApplyCPURules", "ScheduleRowwise", "PadChannels",
    "FuseInvertedResidual", "ChainKernels"})
NOT_CHECKED = {
    "HCPrunePipeline": "the whole build: ends in TVM's VM lowering, whose output is no "
                       "longer a Relax dataflow module (its own steps are checked one by one)",
    "HCPruneVTAPipeline": "the whole VTA build, ends in TVM's lowering like HCPrunePipeline",
}


@tvm.instrument.pass_instrument
class OurPassesWellFormed:
    """Assert ``relax.analysis.check_well_formed`` after each of tvm_hcprune's passes."""

    def run_after_pass(self, mod, info):
        if info.name in OUR_RELAX_PASSES:
            assert relax.analysis.check_well_formed(mod), f"{info.name} output is ill-formed"


@pytest.fixture(autouse=True)
def _well_formed_passes():
    """Every test runs with the well-formedness instrument on tvm_hcprune's passes."""
    with tvm.transform.PassContext(instruments=[OurPassesWellFormed()]):
        yield


@pytest.fixture()
def logging_cc(tmp_path):
    """A compiler wrapper that logs each call and runs the host's g++: (path, log path)
    (the cross-compiler tests: a device's compiler, proven used)."""
    import shutil

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no host g++ to wrap")
    log = tmp_path / "cc.log"
    cc = tmp_path / "device-g++"
    cc.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{gxx}" "$@"\n')
    cc.chmod(0o755)
    return str(cc), log
