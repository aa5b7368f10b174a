"""Training side of gallery (needs torch): data, backbones, heads, compat methods, fit loop."""
