"""Compilation: tvm_hcprune's Relax pipeline and :func:`build` (:mod:`.pipeline`), the CPU
kernels, layout passes and schedule rules (:mod:`.cpu`), CUDA (:mod:`.cuda`), schedule
databases applied at build time (:mod:`.database`) and per-kernel timing (:mod:`.timing`).
Nothing here searches for schedules: that is :mod:`tvm_hcprune.tuning`."""
