"""Face input: encoder presets, 5-point alignment, YuNet detection, dlib galleries.

OpenCV (the `[faces]` extra) is optional: alignment falls back to Pillow, and
detection raises BadInput naming the extra when OpenCV is missing.
"""
