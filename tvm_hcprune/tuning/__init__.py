"""Measuring and searching: MetaSchedule tuning of the functions :func:`~tvm_hcprune.build`
compiles (:mod:`.tune`) and remote measurement and runs through TVM's RPC tracker
(:mod:`.rpc`). It sits above :mod:`tvm_hcprune.backend`: it calls the build."""
