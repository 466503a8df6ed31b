"""Exception types. Every user-facing error names the problem and the fix."""


class HCPruneError(ValueError):
    """A problem with the user's input (model, plan, option, file).

    The CLI prints the message and exits with status 2; nothing is written.
    """


class UnsupportedModelError(HCPruneError):
    """The model uses something tvm_hcprune cannot handle (yet); the message says what."""
