"""Small shared helpers: atomic file writes (:mod:`.io`), lazy exports (:mod:`.lazy`),
progress bars (:mod:`.progress`), option records (:mod:`.options`) and the one set of Relax
helpers (:mod:`.relax`: shapes, constants, bindings, uses, constant replacement, taps)."""

from tvm_hcprune.utils.io import atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]
