"""Benchmark dataset builders (no torch): glyph identities and Fashion-MNIST.

    from gallery.datasets.glyphs import GlyphConfig, build_glyphs
    from gallery.datasets.fashion_mnist import FashionConfig, build_fashion_mnist

Both write OUT/<scenario>/{old,new,eval} as ImageFolder PNGs and HDF5 files plus
OUT/manifest.json (see gallery.datasets.layout); the CLI is `gallery data ...`.
"""
