"""gallery: upgrade an embedding model without re-encoding the gallery.

This package never imports torch: stores, search, encoders (onnxruntime),
metrics and the compatibility checker work on a serving machine without it.
Training lives in the separate `trainer` package.
"""

__version__ = "0.1.0"
