"""How tests/data/store_v1.h5.gz was made: run at commit 1eb4ccf (schema v1, before /items/id_hash).

    .venv/bin/python tests/data/make_store_v1.py OUT.h5 && gzip -9 -n -c OUT.h5 > tests/data/store_v1.h5.gz

Kept gzipped: the store's chunks are allocated whole (~2.6 MB for 7 rows, nearly all zeros).
Run by today's code it would write the current schema, so the fixture is not regenerated.
"""

import sys

import numpy as np

from gallery.store import ModelInfo, Store

DIM = 8


def main(out: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(7, DIM)).astype(np.float32)
    ids = ["a0", "a1", "a2", "b0", "b1", "é-5", "日本-6"]  # non-ASCII ids: the hash is of UTF-8 bytes
    people = ["alice", "alice", "alice", "bob", "bob", "émile", "nihon"]
    with Store.create(out, ModelInfo(version="v1", dim=DIM, model_id="fixture-v1")) as store:
        store.enroll(x[:4], ids[:4], people[:4], batch_size=3)
        store.enroll(x[4:], ids[4:], people[4:])
        store.remove(["a1"])


if __name__ == "__main__":
    main(sys.argv[1])
