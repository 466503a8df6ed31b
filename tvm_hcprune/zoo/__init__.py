"""Bundled and package-shipped models (:mod:`.models`) and real datasets (:mod:`.datasets`):
the model files live in ``zoo/data/``; nothing is downloaded."""
