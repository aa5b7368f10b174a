"""How tests/data/store_v2_backfill.h5.gz and store_v2_state3.h5.gz were made: run at commit
82b23b6 (schema v2, the last single-file layout), e.g. with that commit's `gallery/` on
PYTHONPATH:

    git archive 82b23b6 gallery | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old .venv/bin/python tests/data/make_store_v2.py OUT.h5 OUT3.h5
    gzip -9 -n -c OUT.h5 > tests/data/store_v2_backfill.h5.gz
    gzip -9 -n -c OUT3.h5 > tests/data/store_v2_state3.h5.gz

A v2 store with everything `gallery migrate` must carry over: rows in several batches, a
removal, an alias, a threshold, an upgrade v1 -> v2 (lineage), a finished backfill overlay
and an unfinished run's plan and cursor, an interrupted enrol's tail past the committed
count. OUT3 is the same file with the overlay's `state` attribute rewritten in the older
3-field format [committed, cursor, plan length] (no published count).
"""

import shutil
import sys

import h5py
import numpy as np

from gallery.preprocess import l2_normalize
from gallery.rollout import overlay, state
from gallery.store import ModelInfo, Store

DIM = 8
IDS = ["a0", "a1", "a2", "b0", "b1", "é-5", "日本-6", "c7", "c8", "c9"]


def main(out: str, out3: str) -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(len(IDS), DIM)).astype(np.float32)
    with Store.create(out, ModelInfo(version="v1", dim=DIM, model_id="fixture-v1")) as st:
        st.enroll(x[:4], IDS[:4], batch_size=3)
        st.enroll(x[4:], IDS[4:])
        st.remove(["a1"])
        st.add_model(ModelInfo(version="v2", dim=DIM, model_id="fixture-v2"))
        st.set_threshold("v2", "v1", 0.25)
        st.set_alias("prod", "v1")
        state.set_parent(st, "v2", "v1")
        st.set_active_model("v2")
        back = l2_normalize(rng.normal(size=(6, DIM))).astype(np.float32)
        overlay.start_plan(st, "v2", np.array([0, 2, 3, 4, 5, 6]), {"batch_size": 2, "base": 0})
        overlay.commit_batch(st, "v2", np.array([0, 2]), back[:2], ["0" * 64] * 2, cursor=2, publish=True)
        overlay.commit_batch(st, "v2", np.array([3, 4]), back[2:4], ["1" * 64] * 2, cursor=4, publish=False)
    with h5py.File(out, "r+") as h5:  # an interrupted enrol's tail: rows past `committed`
        items = h5["items"]
        n = int(items.attrs["committed"])
        for name in items:
            items[name].resize(n + 2, axis=0)
        items["id"][n:] = [b"tail-0", b"tail-1"]
    shutil.copy(out, out3)
    with h5py.File(out3, "r+") as h5:
        g = h5["rollout/backfill/v2"]
        g.attrs["state"] = np.asarray(g.attrs["state"][:3], np.int64)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
