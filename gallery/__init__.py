"""gallery: upgrade an embedding model without re-encoding the gallery.

    import gallery
    g = gallery.open("runs/demo/store.h5")   # a Gallery (gallery/gallery.py)
    print(g.search(["probe.png"], k=5).match())

`open`, `create` and `Gallery` are the front door for a store; `check_compat` runs
the compatibility checker (gallery/compat). Training is the separate `trainer`
package (`trainer.train`, `trainer.train_compatible`), so this package never
imports torch: stores, search, encoders (onnxruntime), metrics and the checker
work on a serving machine without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gallery.compat.checker import check_compat
    from gallery.gallery import Gallery, create, open

_FRONT_DOOR = {"open": "gallery.gallery", "create": "gallery.gallery", "Gallery": "gallery.gallery",
               "check_compat": "gallery.compat.checker"}


def __getattr__(name: str) -> Any:
    # Resolved on first use so that importing one leaf module (gallery.errors, as the CLI
    # and trainer do) does not load the store, faiss glue and checker: CLI start-up.
    if name in _FRONT_DOOR:
        return getattr(importlib.import_module(_FRONT_DOOR[name]), name)
    raise AttributeError(f"module 'gallery' has no attribute {name!r}")


__all__ = ["open", "create", "Gallery", "check_compat", "__version__"]
