"""``Options``: the base of tvm_hcprune's frozen option records.

A record's dataclass fields are the one list of its options; functions and passes take
``config=None, **overrides`` and build the record with :meth:`Options.of`, so an option is
declared, documented and validated in one place.
"""

from __future__ import annotations

import dataclasses

from tvm_hcprune.errors import HCPruneError

__all__ = ["Options"]


class Options:
    """Mixin for frozen dataclasses of options (validate in ``__post_init__``)."""

    @classmethod
    def of(cls, config=None, /, **overrides):
        """``config`` (a record, a dict of options or None for the defaults) with
        ``overrides`` applied; unknown option names raise :class:`HCPruneError`.

        Examples
        --------
        >>> from tvm_hcprune.planning.config import PruneConfig
        >>> PruneConfig.of(None, ratio=0.3).ratio
        0.3
        """
        if isinstance(config, dict):
            config, overrides = None, {**config, **overrides}
        if config is None:
            config = cls()
        elif not isinstance(config, cls):
            raise HCPruneError(f"expected a {cls.__name__} or a dict of its options, got "
                               f"{type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise HCPruneError(f"unknown {cls.__name__} option(s) {unknown}; the options are "
                               f"{sorted(names)}")
        return dataclasses.replace(config, **overrides) if overrides else config

    def options(self) -> dict:
        """The options as a ``{name: value}`` dict (shallow)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
