"""``parse_target``: turn what users type into a TVM 0.27 :class:`tvm.target.Target`.

TVM 0.27 dropped the CLI target string form (``"llvm -mcpu=znver3"`` raises). This module
accepts it again (tvmc style) together with everything TVM accepts: a ``Target``, a JSON dict
or JSON string, a tag (``"nvidia/nvidia-a100"``) and a bare kind (``"llvm"``).

A bare ``llvm`` target (no ``mcpu`` and no foreign ``mtriple``) is completed with the host's
CPU name and physical core count: without ``mcpu`` LLVM emits no AVX2/FMA code.
"""

from __future__ import annotations

import json
import shlex

from tvm.target import Target, codegen

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.host import host_physical_cores

# option keys whose value is a list in TVM 0.27's target schema
_LIST_KEYS = {"mattr", "keys", "libs", "cl-opt", "device_features"}
_VTA_TARGET = {"kind": "ext_dev", "keys": ["vta", "cpu"], "device": "vta"}


def _convert_value(key: str, value: str):
    if key in _LIST_KEYS:
        return [v for v in value.split(",") if v]
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value)
    except ValueError:
        return value


def _parse_cli(text: str) -> dict:
    """Parse ``"kind -key=value -flag ..."`` into a target dict."""
    try:
        parts = shlex.split(text)
    except ValueError as err:
        raise HCPruneError(f"cannot parse target string {text!r}: {err}") from err
    kind, opts = parts[0], parts[1:]
    out: dict = {"kind": kind}
    for opt in opts:
        if not opt.startswith("-"):
            raise HCPruneError(
                f"target option {opt!r} in {text!r} must look like -key=value (e.g. -mcpu=znver3)"
            )
        body = opt.lstrip("-")
        if "=" in body:
            key, value = body.split("=", 1)
            out[key] = _convert_value(key, value)
        else:
            out[body] = True
    if kind == "cuda" and "host" not in out:
        out["host"] = {"kind": "llvm"}
    return out


def _complete_llvm(d: dict) -> dict:
    """Add the host mcpu/num-cores to an llvm dict that names no CPU and no foreign triple.

    A target that names its ISA (``mattr``, e.g. ``["+avx2", "+fma"]``) but no ``mcpu`` keeps
    LLVM's generic CPU: the host's ``mcpu`` would add the host's own features (AVX-512 on a
    Zen 4) to what the target asked for.
    """
    if d.get("kind") != "llvm":
        return d
    triple = d.get("mtriple")
    if triple and triple != codegen.llvm_get_system_triple():
        return d
    d = dict(d)
    if not d.get("mcpu") and not d.get("mattr"):
        d["mcpu"] = str(codegen.llvm_get_system_cpu())
    d.setdefault("num-cores", host_physical_cores())
    return d


def _check_mcpu(d: dict) -> None:
    if d.get("kind") != "llvm" or not d.get("mcpu"):
        return

    triple = d.get("mtriple") or codegen.llvm_get_system_triple()
    if not codegen.llvm_is_valid_cpu(d["mcpu"], triple):
        raise HCPruneError(
            f"unknown LLVM CPU {d['mcpu']!r} in target; use one of "
            "tvm.target.codegen.llvm_get_cpu_archlist(), e.g. znver3, skylake-avx512, cortex-a72"
        )


def _from_dict(d: dict, original):
    if not isinstance(d.get("kind"), str):
        raise HCPruneError(f"target {original!r} has no 'kind'; e.g. {{'kind': 'llvm'}}")
    kind = d["kind"]
    kinds = list(Target.list_kinds())
    if kind not in kinds:
        raise HCPruneError(
            f"unknown target {kind!r} (from {original!r}); known kinds: {sorted(kinds)}, "
            "'vta', or a tag such as 'nvidia/nvidia-a100'"
        )
    d = _complete_llvm(d)
    if isinstance(d.get("host"), dict | str):
        d = dict(d)
        host = parse_target(d["host"])
        d["host"] = json.loads(str(host))
    _check_mcpu(d)
    try:
        return Target(d)
    except Exception as err:  # noqa: BLE001 - TVM raises several error types here
        raise HCPruneError(f"invalid target {original!r}: {err}") from err


def parse_target(x):
    """Return a :class:`tvm.target.Target` for ``x``.

    Parameters
    ----------
    x : tvm.target.Target, dict or str
        A Target (returned with the host CPU added when it is a bare ``llvm``); a JSON dict
        (``{"kind": "llvm", "mcpu": "znver3"}``); a JSON string; a tag
        (``"nvidia/nvidia-a100"``); a bare kind (``"llvm"``, ``"cuda"``); ``"vta"``; or a
        tvmc-style string (``"llvm -mcpu=znver3 -num-cores=2"``, ``"cuda -arch=sm_80"``).

    Returns
    -------
    tvm.target.Target

    Raises
    ------
    HCPruneError
        For an unknown kind, tag or CPU name, or malformed options.

    Examples
    --------
    >>> tvm_hcprune.parse_target("llvm -mcpu=znver3").attrs["mcpu"]  # doctest: +SKIP
    'znver3'
    """
    if isinstance(x, Target):
        d = json.loads(str(x))
        if d.get("kind") == "llvm" and not d.get("mcpu"):
            return _from_dict(d, x)
        return x
    if isinstance(x, dict):
        return _from_dict(dict(x), x)
    if not isinstance(x, str):
        raise HCPruneError(
            f"target must be a tvm.target.Target, dict or str, not {type(x).__name__}"
        )
    text = x.strip()
    if not text:
        raise HCPruneError("empty target; use e.g. 'llvm' or 'cuda -arch=sm_80'")
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise HCPruneError(f"target JSON {text!r} is invalid: {err}") from err
        return _from_dict(d, x)
    if text.lower() == "vta":
        return Target(_VTA_TARGET)
    if "/" in text.split()[0] and " " not in text:
        try:
            return Target(text)
        except Exception as err:  # noqa: BLE001
            raise HCPruneError(
                f"unknown target tag {text!r}; use a TVM tag (e.g. 'nvidia/nvidia-a100') "
                "or a kind such as 'llvm' or 'cuda -arch=sm_80'"
            ) from err
    return _from_dict(_parse_cli(text), x)
