"""The compatibility checker: may v2 queries search a v1 gallery?

protocols (1:1 / 1:N splits), evalsets (identity folder, insightface .bin, IJB-C,
precomputed embeddings), checker (the run and its gates), report (JSON schema),
plots (ROC + CMC PNG).
"""
