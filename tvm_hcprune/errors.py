"""Exception types. Every user-facing error names the problem and the fix.

Both types are registered with TVM's FFI (:func:`tvm_ffi.register_error`) when this module is
imported, so an error raised inside a Python TVM pass (e.g. the pipeline's database hook)
reaches the caller as itself instead of a ``RuntimeError``.
"""


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
    prints it as ``hcprune COMMAND: warning: ...`` on stderr."""


class CollapsedModelWarning(HCPruneWarning):
    """The pruned model's outputs on the held-out calibration samples no longer depend on the
    input (``report.agreement["collapsed"]`` says why); the report's summary and Markdown
    carry the same warning, so the CLI prints it there and not again."""


class UnsupportedModelError(HCPruneError):
    """The model uses something tvm_hcprune cannot handle (yet); the message says what."""


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
