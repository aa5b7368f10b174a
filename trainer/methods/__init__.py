"""Compatibility methods: one registered class per file in this package.

Every module here is imported on first use, so adding a method means adding a
file; neither the fit loop nor this file changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from gallery.registry import Registry

from trainer.methods.base import CompatMethod, MethodContext

METHODS: Registry[type[CompatMethod]] = Registry("compat method")


def load_all() -> Registry[type[CompatMethod]]:
    """Import every method module (each registers itself) and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    return METHODS


__all__ = ["METHODS", "CompatMethod", "MethodContext", "load_all"]
