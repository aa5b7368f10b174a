"""`gallery serve` on loopback: every route's happy path and bad input, results equal to
in-process search on the same store, the key, limits, metrics, following a model switch,
graceful SIGTERM and SIGKILL during enrolment (switch under load: test_serve_switch.py)."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gallery.index import check_sidecar
from gallery.search import search
from gallery.serve.config import ServeConfig, read_api_key
from gallery.serve.state import STORE_HANDLES
from gallery.store import ModelInfo, Store, WriterLock
from serve_helpers import ServerThread, auth, make_store, start_process
from gallery.index import store_index

KEY = "k3y-for-tests-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "g.h5"
    emb = make_store(path)
    with ServerThread(ServeConfig(path, port=0, max_batch=8, max_body_mb=0.25, lock_wait_seconds=0.3)) as srv:
        yield srv, path, emb


def post(srv, route, **kwargs):
    return httpx.post(srv.url + route, timeout=30, **kwargs)


def assert_same_as_in_process(body: dict, expected, names: list | None = None) -> None:
    """HTTP records against the library's SearchResult (float32 scores survive JSON exactly)."""
    assert body["model_version"] == expected.query_model
    names = names or list(range(len(expected.rows)))
    assert body["results"] == expected.to_records(names)
    for q, record in enumerate(body["results"]):  # the fields the service promises, from the arrays
        live = expected.rows[q] >= 0
        assert [h["item_id"] for h in record["hits"]] == list(expected.ids[q][live])
        assert [h["score"] for h in record["hits"]] == [float(s) for s in expected.scores[q][live]]
        assert [h["model_version"] for h in record["hits"]] == list(expected.models[q][live])
        assert [h["accepted"] for h in record["hits"]] == list(expected.accepted[q][live])
        assert record["match"] == expected.match()[q] and record["rejected"] == (expected.match()[q] is None)


def test_search_equals_in_process_search(served):
    srv, path, emb = served
    rng = np.random.default_rng(1)
    queries = np.concatenate([emb[:3] + 0.3 * rng.standard_normal((3, emb.shape[1])),
                              rng.standard_normal((3, emb.shape[1]))]).astype(np.float32)
    for k, threshold in ((5, None), (12, 0.6), (1, -1.0), (3, 0.999)):
        r = post(srv, "/v1/search", json={"embeddings": queries.tolist(), "k": k, "threshold": threshold})
        assert r.status_code == 200, r.text
        assert r.headers["x-gallery-model-version"] == "v1" and r.json()["generation"]
        with Store.open(path) as st:
            expected = search(st, queries, k=k, threshold=threshold)
        assert_same_as_in_process(r.json(), expected)
        rejected = [rec["rejected"] for rec in r.json()["results"]]
        if threshold is None:  # the stored 0.5 accepts the near copies of enrolled rows
            assert rejected[:3] == [False] * 3
        if threshold == 0.999:  # the override rejects everything but exact copies
            assert rejected == [True] * 6


@pytest.mark.parametrize("body, status, words", [
    ({"embeddings": [[0.1] * 15], "k": 3}, 400, "dimension 15"),
    ({"embeddings": [[0.1] * 16, [0.2] * 15]}, 400, "different lengths"),
    ({"embeddings": [], "k": 3}, 400, "no query embeddings"),
    ({"embeddings": [[0.1] * 16], "k": 0}, 400, "k must be"),
    ({"embeddings": [[0.1] * 16], "query_model": "v9"}, 400, "unknown model version 'v9'"),
    ({"embeddings": [[0.1] * 16] * 9}, 413, "--max-batch 8"),
    ({"embeddings": "x"}, 422, "embeddings"),
    ({"k": 3}, 422, "embeddings"),
    ({"embeddings": [["a"] * 16]}, 422, "embeddings"),
])
def test_search_bad_json_input(served, body, status, words):
    r = post(served[0], "/v1/search", json=body)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"]


def test_search_nan_not_json_oversized_and_wrong_type(served):
    srv = served[0]
    nan = '{"embeddings": [[NaN' + ", 0.1" * 15 + "]]}"
    r = post(srv, "/v1/search", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "NaN" in r.json()["error"]
    r = post(srv, "/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = json.dumps({"embeddings": [[0.1] * 16] * 4000})  # > 0.25 MiB
    r = post(srv, "/v1/search", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    chunks = iter([big[:1000].encode(), big[1000:].encode()])  # no content-length: counted as it streams
    r = post(srv, "/v1/search", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = post(srv, "/v1/search", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "content type" in r.json()["error"]
    r = post(srv, "/v1/search", files={"image": ("a.png", b"not an image", "image/png")})
    assert r.status_code == 400 and "embedding-only" in r.json()["error"]
    r = httpx.get(srv.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_state_routes_and_metrics(served):
    srv, path, emb = served
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(srv.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["model_version"] == "v1"
    info = httpx.get(srv.url + "/v1/info").json()
    with Store.open(path) as st:
        assert info["live"] == st.count() and info["active_model"] == st.active_model == info["model_version"]
        assert info["index"]["kind"] == store_index(st).kind and info["thresholds"] == {"v1": {"v1": 0.5}}
    post(srv, "/v1/search", json={"embeddings": emb[:1].tolist()})
    post(srv, "/v1/search", json={"embeddings": [[0.0] * 3]})
    text = httpx.get(srv.url + "/metrics").text
    assert 'gallery_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'gallery_http_requests_total{method="POST",route="/v1/search",status="400"}' in text
    assert 'gallery_query_model{version="v1"} 1.0' in text
    assert f"gallery_live_rows {float(info['live'])}" in text and 'gallery_index{kind="flat"} 1.0' in text
    assert "gallery_staleness_seconds" in text and "gallery_http_request_duration_seconds_bucket" in text
    assert "/v1/search" in httpx.get(srv.url + "/openapi.json").json()["paths"]


def wait_until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_enroll_then_remove_visible_to_search(served):
    srv, path, emb = served
    rng = np.random.default_rng(7)
    new = rng.standard_normal((2, emb.shape[1])).astype(np.float32)
    items = [{"id": "new-a", "identity": "alice", "embedding": new[0].tolist()},
             {"id": "new/b", "embedding": new[1].tolist()}]
    r = post(srv, "/v1/items", json={"items": items})
    assert r.status_code == 201, r.text
    assert r.json()["enrolled"] == 2 and r.json()["rows_model_version"] == "v1"
    with Store.open(path) as st:
        assert {"new-a", "new/b"} <= set(st.columns()["id"])

    def top_ids():
        body = post(srv, "/v1/search", json={"embeddings": new.tolist(), "k": 1}).json()
        return [rec["hits"][0]["item_id"] for rec in body["results"]]
    wait_until(lambda: top_ids() == ["new-a", "new/b"])
    r = post(srv, "/v1/items", json={"items": items[:1]})
    assert r.status_code == 400 and "already in store" in r.json()["error"]
    r = post(srv, "/v1/items", json={"items": [{"id": "x", "embedding": [1.0] * 3}]})
    assert r.status_code == 400 and "dimension 3" in r.json()["error"]
    r = post(srv, "/v1/items", json={"items": [{"id": "x"}]})
    assert r.status_code == 422

    r = httpx.delete(srv.url + "/v1/items/new/b")
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert httpx.delete(srv.url + "/v1/items/new/b").json()["already_removed"] == 1
    r = httpx.delete(srv.url + "/v1/items/no-such-id")
    assert r.status_code == 404 and "unknown ids: no-such-id" in r.json()["error"]
    wait_until(lambda: top_ids()[1] != "new/b")


def test_writes_wait_for_the_reload_holding_the_store_open(tmp_path, monkeypatch):
    """Each write wakes the switcher, which holds the store open for reading while it loads
    the new generation (seconds at scale; widened here to 0.3 s). HDF5 refuses to open for
    writing a file the process holds for reading, so a write arriving then must wait for
    the load, not fail."""
    import gallery.serve.switcher as switcher_mod

    real = switcher_mod.load_snapshot

    def slow_load(path, *args, **kwargs):
        with Store.open(path, "r"):
            time.sleep(0.3)
            return real(path, *args, **kwargs)

    monkeypatch.setattr(switcher_mod, "load_snapshot", slow_load)
    path = tmp_path / "g.h5"
    emb = make_store(path, rows=30)
    statuses = []
    with ServerThread(ServeConfig(path, port=0)) as srv:
        for n in range(4):
            item = {"id": f"b2b-{n}", "embedding": emb[n].tolist()}
            statuses.append(post(srv, "/v1/items", json={"items": [item]}).status_code)
            statuses.append(httpx.delete(f"{srv.url}/v1/items/b2b-{n}", timeout=30).status_code)
    assert statuses == [201, 200] * 4


def test_write_meeting_another_writers_lock_gets_503(served):
    srv, path, emb = served
    lock = WriterLock(path).acquire()  # another writer (a CLI upgrade, say) holds the store
    try:
        r = post(srv, "/v1/items", json={"items": [{"id": "locked", "embedding": [1.0] * 16}]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "locked by another writer" in r.json()["error"]
        assert httpx.delete(srv.url + "/v1/items/i3").status_code == 503
    finally:
        lock.release()
    with Store.open(path) as st:
        assert "locked" not in set(st.columns()["id"]) and check_sidecar(st.verify(), st)["ok"]


def test_api_key(tmp_path):
    path = tmp_path / "g.h5"
    emb = make_store(path, rows=50)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    with ServerThread(ServeConfig(path, port=0, api_key=read_api_key(key_file))) as srv:
        body = {"embeddings": emb[:1].tolist()}
        assert post(srv, "/v1/search", json=body).status_code == 401
        r = post(srv, "/v1/search", json=body, headers=auth(KEY[:-1] + "x"))
        assert r.status_code == 401 and "wrong API key" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert post(srv, "/v1/search", json=body, headers=auth(KEY)).status_code == 200
        for route in ("/v1/info", "/readyz", "/metrics"):
            assert httpx.get(srv.url + route).status_code == 401
            assert httpx.get(srv.url + route, headers=auth(KEY)).status_code == 200
        assert httpx.get(srv.url + "/healthz").status_code == 200
        assert httpx.delete(srv.url + "/v1/items/i1").status_code == 401
    with Store.open(path) as st:
        assert st.count() == 50
    short = tmp_path / "short"
    short.write_text("abc")
    from gallery.errors import BadInput
    with pytest.raises(BadInput, match="at least 16"):
        read_api_key(short)


def test_follows_a_query_model_switch(tmp_path):
    path = tmp_path / "g.h5"
    emb = make_store(path, rows=60)
    with ServerThread(ServeConfig(path, port=0)) as srv:
        # A writer in the service's own process takes turns with its reloads (STORE_HANDLES:
        # HDF5 refuses a writable open beside a read one in one process); CLI writers are
        # other processes and need nothing.
        with STORE_HANDLES, Store.open(path, "a") as st:
            st.add_model(ModelInfo(version="v2", dim=16, model_id="random-v2"))
            st.set_threshold("v2", "v1", 0.25)
            st.set_active_model("v2")

        def answered_by_v2():
            r = post(srv, "/v1/search", json={"embeddings": emb[:1].tolist(), "k": 3})
            assert r.status_code == 200
            return r.json() if r.json()["model_version"] == "v2" else None
        body = wait_until(answered_by_v2)
        assert [h["threshold"] for h in body["results"][0]["hits"]] == [0.25] * 3
        assert r_header(srv) == "v2"


def r_header(srv) -> str:
    return httpx.get(srv.url + "/v1/info").headers["x-gallery-model-version"]


# ---- images ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder, write_digit_folder
    from cli_helpers import ok

    root = tmp_path_factory.mktemp("serve-images")
    make_onnx_encoder(root / "v1.onnx", seed=0)
    write_digit_folder(root / "gallery", n_per_class=3, seed=0)
    write_digit_folder(root / "probes", n_per_class=1, seed=1)
    ok("init", root / "g.h5", "--model", root / "v1.onnx")
    ok("enroll", root / "g.h5", "--images", root / "gallery")
    return root


def test_image_search_equals_in_process_and_guards(image_store):
    from PIL import Image

    import gallery

    root = image_store
    probes = sorted((root / "probes").rglob("*.png"))[:4]
    with ServerThread(ServeConfig(root / "g.h5", port=0)) as srv:
        files = [("image", (p.name, p.read_bytes(), "image/png")) for p in probes]
        r = post(srv, "/v1/search", files=files, data={"k": "4"})
        assert r.status_code == 200, r.text
        with gallery.open(root / "g.h5") as g:
            expected = g.search(probes, k=4)
        assert_same_as_in_process(r.json(), expected, [p.name for p in probes])
        assert [rec["query"] for rec in r.json()["results"]] == [p.name for p in probes]

        r = post(srv, "/v1/search", files=[("image", ("x.png", b"\x89PNG garbage", "image/png"))])
        assert r.status_code == 400 and "not a readable image: x.png" in r.json()["error"]
        bomb = io.BytesIO()
        Image.new("1", (8000, 8000)).save(bomb, "PNG")  # ~10 KB on the wire, 64 Mpx decoded
        r = post(srv, "/v1/search", files=[("image", ("bomb.png", bomb.getvalue(), "image/png"))])
        assert r.status_code == 413 and "8000x8000" in r.json()["error"]
        r = post(srv, "/v1/search", files=files, data={"k": "many"})
        assert r.status_code == 400 and "k must be an integer" in r.json()["error"]

        enrol = [("image", ("e.png", probes[0].read_bytes(), "image/png"))]
        r = post(srv, "/v1/items", files=enrol, data={"id": "probe-0", "identity": "digit-x"})
        assert r.status_code == 201, r.text
        r = post(srv, "/v1/items", files=enrol * 2, data={"id": "only-one"})
        assert r.status_code == 400 and "as many `id` fields" in r.json()["error"]
    with Store.open(root / "g.h5") as st:
        cols = st.columns()
        row = list(cols["id"]).index("probe-0")
        assert cols["identity"][row] == "digit-x" and check_sidecar(st.verify(), st)["ok"]
        from gallery.encoder import embed_paths, load_encoder
        from gallery.preprocess import l2_normalize
        want = l2_normalize(embed_paths(load_encoder(root / "v1.onnx"), probes[:1]))
        np.testing.assert_allclose(st.embeddings(np.array([row])), want, atol=1e-6)


def test_face_model_queries_are_detected_and_aligned(tmp_path):
    """A face model (SFace, declared 5-point alignment): uploads go through YuNet detection
    and alignment like `gallery search --detect`, with the same results."""
    pytest.importorskip("cv2")
    pytest.importorskip("onnx")
    from gallery.faces import assets
    found, missing = assets.locate()
    if missing:
        pytest.skip(f"face assets missing (run setup.sh): {', '.join(missing[:3])}")
    import gallery
    from cli_helpers import ok
    from gallery.faces.presets import import_encoder

    import_encoder(found["sface"], "sface", tmp_path / "sface.onnx")
    for name in ("obama", "biden"):
        (tmp_path / "people" / name).mkdir(parents=True)
        (tmp_path / "people" / name / f"{name}.jpg").write_bytes((found["photos"] / f"{name}.jpg").read_bytes())
    store = tmp_path / "faces.h5"
    ok("init", store, "--model", tmp_path / "sface.onnx")
    ok("enroll", store, "--images", tmp_path / "people", "--detect", "--detector", found["yunet"])
    query = found["photos"] / "obama2.jpg"
    with ServerThread(ServeConfig(store, port=0, detector=found["yunet"])) as srv:
        r = post(srv, "/v1/search", files=[("image", (query.name, query.read_bytes(), "image/jpeg"))],
                 data={"k": "2"})
        assert r.status_code == 200, r.text
    with gallery.open(store) as g:  # the model declares faces: aligned crops, as over HTTP
        expected = g.search([query], k=2, detector=found["yunet"])
    assert_same_as_in_process(r.json(), expected, [query.name])
    assert r.json()["results"][0]["hits"][0]["identity"] == "obama"


# ---- the process: SIGTERM and SIGKILL ----------------------------------------------------------
def test_sigkill_during_enrolment_loses_no_acknowledged_item(tmp_path):
    path = tmp_path / "g.h5"
    make_store(path, rows=40)
    proc, url = start_process(path)
    acknowledged: list[str] = []
    stop = threading.Event()

    def enrol(worker: int) -> None:
        rng = np.random.default_rng(worker)
        n = 0
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                ids = [f"w{worker}-{n}-{j}" for j in range(3)]
                items = [{"id": i, "embedding": rng.standard_normal(16).tolist()} for i in ids]
                try:
                    r = client.post(url + "/v1/items", json={"items": items})
                except httpx.HTTPError:
                    return  # killed mid-request: not acknowledged
                if r.status_code == 201:
                    acknowledged.extend(ids)
                n += 1

    workers = [threading.Thread(target=enrol, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    wait_until(lambda: len(acknowledged) >= 30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stop.set()
    for w in workers:
        w.join(timeout=60)
    with Store.open(path, "a") as st:  # the lock is free again: the kernel dropped it
        report = check_sidecar(st.verify(), st)
        stored = set(st.columns()["id"])
    assert report["ok"], report["problems"]
    assert set(acknowledged) <= stored


def test_sigterm_finishes_the_request_in_flight_and_releases(tmp_path):
    path = tmp_path / "g.h5"
    emb = make_store(path, rows=40)
    proc, url = start_process(path)
    lock = WriterLock(path).acquire()  # the enrol below waits for it (up to 2 s): in flight
    answer: dict = {}

    def enrol() -> None:
        item = {"id": "t1", "embedding": emb[0].tolist()}
        answer["r"] = httpx.post(url + "/v1/items", json={"items": [item]}, timeout=60)

    client = threading.Thread(target=enrol)
    client.start()
    in_flight = 'gallery_http_requests_in_progress 2.0'  # the enrol and this /metrics request
    wait_until(lambda: in_flight in httpx.get(url + "/metrics").text)
    proc.send_signal(signal.SIGTERM)
    lock.release()
    client.join(timeout=60)
    assert answer["r"].status_code == 201, answer["r"].text
    # uvicorn re-raises the signal once its graceful shutdown is done: -15, not a crash
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = proc.stderr.read()
    assert "Shutting down" in log and "Application shutdown complete" in log, log
    with Store.open(path, "a") as st:  # no lock left behind
        assert "t1" in set(st.columns()["id"]) and check_sidecar(st.verify(), st)["ok"]


def test_cli_refuses_missing_store_and_bad_key_file(tmp_path):
    from cli_helpers import run

    result = run("serve", tmp_path / "none.h5")
    assert result.exit_code == 2 and "store not found" in result.stderr
    make_store(tmp_path / "g.h5", rows=5)
    (tmp_path / "key").write_text("short")
    result = run("serve", tmp_path / "g.h5", "--api-key-file", tmp_path / "key")
    assert result.exit_code == 2 and "at least 16" in result.stderr
    result = run("serve", tmp_path / "g.h5", "--max-batch", "0")
    assert result.exit_code == 2 and "--max-batch" in result.stderr
