"""A seeded slice of ``benchmarks/fuzz.py``: random graphs over the handled ops (channel-
splitting reshapes, softmax over channels, attention, DFL heads, conv_transpose...) prune
without a crash and equal the mask oracle."""

import pytest

from tvm_hcprune.testing.fuzz import BLOCKS, check_model, random_model

# seeds of benchmarks/fuzz.py's run whose graphs cover the risky blocks (~15 s in all)
SEEDS = (0, 1, 2, 5, 7)


def test_slice_covers_the_risky_blocks():
    """The slice exercises the blocks third-party models broke on (issue 16)."""
    drawn = {b for s in SEEDS for b in random_model(s)[1]}
    assert {"dfl", "attention", "split_reshape", "merge_reshape", "softmax", "nhwc",
            "conv_transpose", "resize", "grouped", "split", "shuffle"} <= drawn
    assert len(drawn & set(BLOCKS)) >= 15


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_graph_prunes_and_equals_the_mask_oracle(seed):
    model, blocks = random_model(seed)
    rec = check_model(model, seed)
    assert rec["outcome"] == "ok", (blocks, rec)


def test_check_model_reports_an_oracle_failure(monkeypatch):
    """The checker itself: with the unmasked dense module as the "reference", a graph whose
    channels were pruned must be reported as an oracle failure, not passed."""
    from tvm_hcprune.testing import oracle

    monkeypatch.setattr(oracle, "masked_reference", lambda mod, plan: mod)
    model, _ = random_model(3)
    rec = check_model(model, 3)
    assert rec["outcome"] == "oracle" and "max |pruned - masked reference|" in rec["error"]
