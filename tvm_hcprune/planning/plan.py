"""``PrunePlan``: the JSON contract between scoring and rewriting."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.utils import atomic_write_text

PLAN_VERSION = 1


@dataclass(frozen=True)
class PrunePlan:
    """Kept channel indices per group, for one module (identified by its fingerprint).

    Attributes
    ----------
    fingerprint : str
        ``ChannelGraph.fingerprint`` of the module the plan was made for.
    kept : Mapping[int, tuple[int, ...]]
        Group id -> sorted kept channel indices; groups not listed keep everything.
    sizes : Mapping[int, int]
        Group id -> channel count before pruning (checked when applying).
    config : dict
        The ``PruneConfig`` (as a dict) that made the plan, for the record.
    sparse : Mapping or None
        Block sparsity per layer (a mixed budget, ``prune(..., sparse=True)``), applied
        after the channels are removed: ``{"block": (bk, bn), "criterion": "l2",
        "layers": {layer binding name: fraction of blocks zeroed}}``; None when the plan
        removes channels only (its JSON then has no ``"sparse"`` key, as before).

    Examples
    --------
    >>> pruned, report = tvm_hcprune.prune(mod, ratio=0.5)  # doctest: +SKIP
    >>> report.plan.save("plan.json")  # doctest: +SKIP
    >>> plan = tvm_hcprune.PrunePlan.load("plan.json")  # doctest: +SKIP
    """

    fingerprint: str
    kept: MappingProxyType
    sizes: MappingProxyType
    config: dict = field(default_factory=dict)
    version: int = PLAN_VERSION
    sparse: MappingProxyType | None = None

    @classmethod
    def create(cls, fingerprint, kept: dict, sizes: dict, config: dict | None = None,
               sparse: dict | None = None):
        kept = {int(g): tuple(sorted(int(i) for i in idx)) for g, idx in kept.items()}
        sizes = {int(g): int(s) for g, s in sizes.items()}
        for g, idx in kept.items():
            if g not in sizes:
                raise HCPruneError(f"plan lists group {g} without its size")
            if not idx:
                raise HCPruneError(f"plan keeps no channel of group {g}; keep at least one")
            if len(set(idx)) != len(idx) or idx[0] < 0 or idx[-1] >= sizes[g]:
                raise HCPruneError(f"plan's kept indices for group {g} are invalid "
                                   f"(must be distinct and in [0, {sizes[g]}))")
        return cls(str(fingerprint), MappingProxyType(kept), MappingProxyType(sizes),
                   dict(config or {}), sparse=_check_sparse(sparse))

    def with_config(self, **entries) -> PrunePlan:
        """This plan with ``entries`` added to (or replacing keys of) its config: a new plan,
        the same channels; this one is unchanged.

        Examples
        --------
        >>> plan = PrunePlan.create("f", {0: [1, 3]}, {0: 4}, {"ratio": 0.5})
        >>> plan.with_config(note="kept").config
        {'ratio': 0.5, 'note': 'kept'}
        """
        return replace(self, config={**self.config, **entries})

    @property
    def sparse_layers(self) -> dict:
        """``{layer name: block sparsity}`` (empty when the plan removes channels only)."""
        return dict(self.sparse["layers"]) if self.sparse else {}

    def kept_indices(self, group: int) -> np.ndarray | None:
        idx = self.kept.get(group)
        return None if idx is None else np.asarray(idx, dtype=np.int64)

    def apply_to_onnx(self, onnx_model, graph, pruned_mod):
        """The ONNX model with this plan applied (see
        :func:`tvm_hcprune.planning.export_onnx.apply_to_onnx`)."""
        return apply_to_onnx(onnx_model, graph, self, pruned_mod)

    # ---- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "groups": [
                {"id": g, "size": self.sizes[g], "kept": list(self.kept[g])}
                for g in sorted(self.kept)
            ],
        }
        if self.sparse:
            d["sparse"] = {"block": list(self.sparse["block"]),
                           "criterion": self.sparse["criterion"],
                           "layers": dict(self.sparse["layers"])}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> PrunePlan:
        if not isinstance(d, dict) or "fingerprint" not in d or "groups" not in d:
            raise HCPruneError("not a tvm_hcprune plan (needs 'fingerprint' and 'groups')")
        if int(d.get("version", -1)) != PLAN_VERSION:
            raise HCPruneError(f"plan version {d.get('version')} is not supported "
                               f"(this tvm_hcprune reads version {PLAN_VERSION})")
        try:
            kept = {int(g["id"]): g["kept"] for g in d["groups"]}
            sizes = {int(g["id"]): int(g["size"]) for g in d["groups"]}
        except (KeyError, TypeError, ValueError) as err:
            raise HCPruneError(f"malformed plan group entry: {err}") from None
        return cls.create(d["fingerprint"], kept, sizes, d.get("config", {}),
                          d.get("sparse"))

    def save(self, path) -> None:
        """Write the plan as JSON, atomically."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path) -> PrunePlan:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise HCPruneError(f"plan file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise HCPruneError(f"plan file {path} is not valid JSON: {err}") from None
        return cls.from_dict(d)


def _check_sparse(sparse) -> MappingProxyType | None:
    """A plan's ``sparse`` entry validated and frozen (None or empty: no block sparsity)."""
    if not sparse or not sparse.get("layers"):
        return None
    try:
        block = tuple(int(b) for b in sparse["block"])
        layers = {str(k): float(v) for k, v in dict(sparse["layers"]).items()}
        criterion = str(sparse.get("criterion", "l2"))
    except (KeyError, TypeError, ValueError) as err:
        raise HCPruneError(f"malformed plan 'sparse' entry (needs block [bk, bn] and layers "
                           f"{{name: sparsity}}): {err}") from None
    if len(block) != 2 or min(block) < 1:
        raise HCPruneError(f"plan's sparse block must be two positive integers, got {block}")
    bad = {k: v for k, v in layers.items() if not 0.0 < v < 1.0}
    if bad:
        raise HCPruneError(f"plan's block sparsities must be in (0, 1), got {bad}")
    return MappingProxyType({"block": block, "criterion": criterion,
                             "layers": MappingProxyType(layers)})
