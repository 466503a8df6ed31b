"""Exception types. Every user-facing error names the problem and the fix.

Both types are registered with TVM's FFI (:func:`tvm_ffi.register_error`) when this module is
imported, so an error raised inside a Python TVM pass (e.g. the pipeline's database hook)
reaches the caller as itself instead of a ``RuntimeError``.
"""


import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class HCPruneError(ValueError):
    """A problem with the user's input (model, plan, option, file).

    The CLI prints the message and exits with status 2; nothing is written.

    Examples
    --------
    >>> try:
    ...     tvm_hcprune.prune(mod, ratio=1.5)  # doctest: +SKIP
    ... except tvm_hcprune.HCPruneError as err:
    ...     print(err)
    """


class HCPruneWarning(UserWarning):
    """A result the user should look at before deploying it (a collapsed pruned model, a
    latency measured on a busy host); the message says what and what to change. The CLI
    prints it as ``hcprune COMMAND: warning: ...`` on stderr.

    Examples
    --------
    >>> import warnings
    >>> warnings.simplefilter("error", tvm_hcprune.HCPruneWarning)  # doctest: +SKIP
    >>> tvm_hcprune.prune(mod, budget=tvm_hcprune.Latency(fraction=0.5))  # doctest: +SKIP
    Traceback (most recent call last):
    HCPruneWarning: the closed loop ended +79.0% from the goal of the budget 0.5x latency ...
    """


class CollapsedModelWarning(HCPruneWarning):
    """The pruned model's outputs on the held-out calibration samples no longer depend on the
    input (``report.agreement["collapsed"]`` says why); the report's summary and Markdown
    carry the same warning, so the CLI prints it there and not again.

    Examples
    --------
    >>> pruned, report = tvm_hcprune.prune(mod, budget=tvm_hcprune.Latency(fraction=0.33),
    ...                                    calibration=lines)  # doctest: +SKIP
    CollapsedModelWarning: the pruned model has collapsed at 0.33x latency: on the 24 ...
    >>> report.agreement["collapsed"]  # doctest: +SKIP
    'every sample is given class 0 (the dense model: 2 classes, ...'
    """


class UnsupportedModelError(HCPruneError):
    """The model uses something tvm_hcprune cannot handle (yet); the message says what."""


def warn(message: str, category: type[Warning] = HCPruneWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside this package (the user's
    ``prune`` call or pass), however deep inside it the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)


def _register_with_ffi() -> None:
    """Register the error types with TVM's FFI (TVM turns unregistered Python exceptions
    raised across it into ``RuntimeError``); a no-op when tvm_ffi is missing or too old."""
    try:
        import tvm_ffi
    except ImportError:
        return
    try:
        known = tvm_ffi.core.ERROR_TYPE_TO_NAME
        for cls in (HCPruneError, UnsupportedModelError):
            if cls not in known:
                tvm_ffi.register_error(cls)
    except AttributeError:
        return


_register_with_ffi()
