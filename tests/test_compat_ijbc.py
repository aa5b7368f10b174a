"""IJB-C meta files (templates, 1:1 pairs, 1:N galleries G1/G2 and mixed probes) written
here in the exact formats, and the checker over them against naive recomputation."""

import io

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from compat_helpers import ENCODERS, embed_units, random_images
from cli.main import app
from gallery.compat.checker import CheckConfig, run_check
from gallery.compat.evalsets import aggregate_templates
from gallery.errors import BadInput


def _write_ijbc(root, faces, pairs, gallery_csv=None, probe_csv=None, gallery2_csv=None, images=None):
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    lines = []
    for k, (template, media) in enumerate(faces):
        pixels = random_images(1, seed=100 + k)[0] if images is None else images[k]
        Image.fromarray(pixels).save(root / "loose_crop" / f"{k}.jpg", quality=95)
        lines.append(f"{k}.jpg {template} {media}")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(lines) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    if gallery_csv:
        (root / "meta" / "ijbc_1N_gallery_G1.csv").write_text(gallery_csv)
        (root / "meta" / "ijbc_1N_probe_mixed.csv").write_text(probe_csv)
    if gallery2_csv:
        (root / "meta" / "ijbc_1N_gallery_G2.csv").write_text(gallery2_csv)


FACES = [(1, 10), (1, 10), (1, 11), (2, 20), (3, 30), (3, 31), (3, 31), (4, 40), (5, 50), (5, 51)]
PAIRS = [(1, 2, 1), (1, 3, 0), (2, 3, 1), (4, 5, 0), (1, 5, 0), (3, 4, 1)]


def naive_templates(features, faces):
    out = {}
    for template in sorted({t for t, _ in faces}):
        total = 0
        for media in sorted({m for t, m in faces if t == template}):
            rows = [features[k] / np.linalg.norm(features[k]) for k, (t, m) in enumerate(faces)
                    if t == template and m == media]
            total = total + np.mean(rows, axis=0)
        out[template] = total / np.linalg.norm(total)
    return out


def test_template_aggregation_matches_naive_loop():
    features = np.random.default_rng(0).normal(size=(len(FACES), 5))
    templates = np.array([t for t, _ in FACES])
    media = np.array([m for _, m in FACES])
    ids, agg = aggregate_templates(features, templates, media)
    expected = naive_templates(features, FACES)
    assert ids.tolist() == sorted(expected)
    for i, t in enumerate(ids):
        np.testing.assert_allclose(agg[i], expected[t], atol=1e-6)


def _one_to_n_layout():
    """FACES (templates 1-5, the 1:1 pairs) plus a 1:N split in the IJB-C files' shape: G1 enrols
    subjects 100-105, G2 subjects 200-205 (101 and 201 with two templates); every subject has
    two probe templates in the mixed probe file. Faces of a subject are noisy copies of one
    picture so that searches are neither all right nor all wrong; CSVs have one row per face."""
    rng = np.random.default_rng(7)
    faces, images = list(FACES), list(random_images(len(FACES), seed=100))
    rows = {"G1": [], "G2": [], "probe": []}
    template = 10
    for subject in (*range(100, 106), *range(200, 206)):
        base = rng.integers(0, 256, size=(8, 8))
        roles = ["G1" if subject < 200 else "G2"] * (2 if subject in (101, 201) else 1) + ["probe"] * 2
        for role in roles:
            for face in range(1 + template % 3):  # 1-3 faces over 1-2 media
                faces.append((template, 10 * template + face % 2))
                images.append(np.clip(base + rng.normal(0, 90, size=(8, 8)), 0, 255).astype(np.uint8))
                rows[role].append((template, subject, f"img/{len(faces) - 1}.jpg"))
            template += 1
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"
    csvs = {k: header + "".join(f"{t},{s},{f},{n}\n" for n, (t, s, f) in enumerate(v)) for k, v in rows.items()}
    unique = {k: sorted({(t, s) for t, s, _ in v}) for k, v in rows.items()}
    return faces, np.stack(images), csvs, unique


def brute_force_1n(query, gallery, probes, enrolled, fpir):
    """Naive loops: rank of each probe's subject among the gallery subjects (an identity scores
    its best template; ties count against the probe), rank-1/5/10, and TPIR at `fpir` (a mate
    at rank 1 counts when at most floor(fpir * n) of the n non-mated top-1 scores reach its score)."""
    ranks, mate_scores, nonmated = [], [], []
    for t, subject in probes:
        best = {}
        for gt, gs in enrolled:
            best[gs] = max(best.get(gs, -np.inf), float(query[t] @ gallery[gt]))
        if subject in best:
            ranks.append(1 + sum(1 for s, v in best.items() if s != subject and v >= best[subject]))
            mate_scores.append(best[subject])
        else:
            nonmated.append(max(best.values()))
    allowed = int(np.floor(fpir * len(nonmated) + 1e-9))
    tpir = np.mean([r == 1 and sum(v >= m for v in nonmated) <= allowed for r, m in zip(ranks, mate_scores)])
    return {"rank1": np.mean([r <= 1 for r in ranks]), "rank5": np.mean([r <= 5 for r in ranks]),
            "rank10": np.mean([r <= 10 for r in ranks]), "tpir": tpir, "num_mated": len(ranks),
            "num_nonmated": len(nonmated)}


def test_checker_on_ijbc(tmp_path):
    faces, images, csvs, unique = _one_to_n_layout()
    _write_ijbc(tmp_path, faces, PAIRS, csvs["G1"], csvs["probe"], csvs["G2"], images)
    result = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34, old_to_new=True,
                                   require_criterion=True, max_new_drop=1.0), load=ENCODERS.__getitem__)
    report = result.report
    stored = np.stack([np.asarray(Image.open(tmp_path / "loose_crop" / f"{k}.jpg")) for k in range(len(faces))])
    feats = {role: naive_templates(embed_units(ENCODERS[role], stored), faces) for role in ("old", "new")}
    scores = [float(feats["new"][a] @ feats["old"][b]) for a, b, _ in PAIRS]
    labels = [c for _, _, c in PAIRS]
    ver = report["comparisons"]["new->old"]["verification"]
    assert ver["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert report["data"]["kind"] == "ijbc" and report["data"]["num_templates"] == len({t for t, _ in faces})
    search = report["protocol"]["search"]
    assert search["galleries"]["G1"] == {"gallery_size": 7, "gallery_identities": 6,
                                         "num_mated_probes": 12, "num_nonmated_probes": 12}
    assert search["gallery_size"] == 14 and search["num_nonmated_probes"] == 0  # G1+G2 together
    # every pair, each gallery searched alone by all mixed probes, against naive loops
    means = {}
    for name in ("old/old", "new/new", "new->old", "old->new"):
        q, g = report["comparisons"][name]["query"], report["comparisons"][name]["gallery"]
        by_gallery = report["comparisons"][name]["identification_by_gallery"]
        for gallery in ("G1", "G2"):
            got = by_gallery["galleries"][gallery]
            want = brute_force_1n(feats[q], feats[g], unique["probe"], unique[gallery], fpir=0.1)
            assert (got["num_mated"], got["num_nonmated"]) == (12, 12) == (want["num_mated"], want["num_nonmated"])
            for k in ("rank1", "rank5", "rank10"):
                assert got[k] == pytest.approx(want[k]), (name, gallery, k)
            assert [p["fpir"] for p in got["tpir_at_fpir"]] == [0.1] and got["skipped_fpir"] == [1e-3, 1e-2]
            assert got["tpir_at_fpir"][0]["tpir"] == pytest.approx(want["tpir"]), (name, gallery)
        mean = by_gallery["mean"]
        for k in ("rank1", "rank5", "rank10"):
            assert mean[k] == pytest.approx((by_gallery["galleries"]["G1"][k] + by_gallery["galleries"]["G2"][k]) / 2)
        tpirs = [by_gallery["galleries"][n]["tpir_at_fpir"][0]["tpir"] for n in ("G1", "G2")]
        assert mean["tpir_at_fpir"] == [{"fpir": 0.1, "tpir": pytest.approx(np.mean(tpirs))}]
        means[name] = mean["rank1"]
        # the legacy field still enrols G1 and G2 together: every probe is mated there
        assert report["comparisons"][name]["identification"]["num_nonmated"] == 0
    assert 0 < min(means.values()) and max(means.values()) < 1  # the searches are not trivial
    # the headline, criterion and gates use the mean of G1 and G2
    assert report["headline"]["metric"] == "rank1@mean(G1,G2)" and report["headline"]["galleries"] == ["G1", "G2"]
    assert report["headline"]["values"] == pytest.approx(means)
    assert report["criterion"]["new_to_old"] == pytest.approx(means["new->old"])
    assert report["criterion"]["old_old"] == pytest.approx(means["old/old"])
    assert report["old_to_new_criterion"]["old_to_new"] == pytest.approx(means["old->new"])
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["require_criterion"]["value"] == pytest.approx(means["new->old"])
    assert gates["max_new_drop"]["value"] == pytest.approx(means["old/old"] - means["new/new"])
    assert gates["require_criterion"]["passed"] == (means["new->old"] > means["old/old"])


def test_ijbc_per_gallery_table(tmp_path, monkeypatch):
    from rich.console import Console

    import cli.commands.compat as compat_cli

    faces, images, csvs, _ = _one_to_n_layout()
    _write_ijbc(tmp_path, faces, PAIRS, csvs["G1"], csvs["probe"], csvs["G2"], images)
    report = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                       load=ENCODERS.__getitem__).report
    out = io.StringIO()
    monkeypatch.setattr(compat_cli, "console", Console(file=out, width=200))
    compat_cli._render(report)
    text = out.getvalue()
    assert "1:N per gallery" in text and "headline: rank1@mean(G1,G2)" in text
    mean = report["comparisons"]["new->old"]["identification_by_gallery"]["mean"]
    row = next(line for line in text.splitlines() if "new->old" in line and "mean" in line)
    assert f"{mean['rank1']:.3f}" in row


def test_ijbc_gallery_without_mated_probes(tmp_path):
    faces, images, csvs, _ = _one_to_n_layout()
    header, *lines = csvs["probe"].splitlines()
    probes_of_g1 = "\n".join([header] + [line for line in lines if line.split(",")[1].startswith("1")]) + "\n"
    _write_ijbc(tmp_path, faces, PAIRS, csvs["G1"], probes_of_g1, csvs["G2"], images)
    with pytest.raises(BadInput, match="no probe in ijbc_1N_probe_mixed.csv has a subject of gallery G2"):
        run_check(CheckConfig(old="old", new="new", data=str(tmp_path)), load=ENCODERS.__getitem__)


def test_ijbc_single_gallery_file_is_one_gallery(tmp_path):
    gallery_csv = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,100,a.jpg\n1,100,b.jpg\n4,200,c.jpg\n"
    probe_csv = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,100,d.jpg\n3,200,e.jpg\n5,300,f.jpg\n"
    _write_ijbc(tmp_path, FACES, PAIRS, gallery_csv, probe_csv)
    report = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                       load=ENCODERS.__getitem__).report
    assert "identification_by_gallery" not in report["comparisons"]["new->old"]
    assert report["headline"]["metric"] == "rank1" and "galleries" not in report["protocol"]["search"]
    ident = report["comparisons"]["new->old"]["identification"]
    assert ident["num_mated"] == 2 and ident["num_nonmated"] == 1


def test_ijbc_from_precomputed_face_embeddings(tmp_path):
    _write_ijbc(tmp_path, FACES, PAIRS)
    with_models = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34,
                                        save_embeddings=str(tmp_path / "faces.h5")), load=ENCODERS.__getitem__)
    # features alone (no model files, e.g. private images) give the same numbers
    features_only = run_check(CheckConfig(data=str(tmp_path), embeddings=str(tmp_path / "faces.h5"),
                                          target_far=0.34))
    for key in ("old/old", "new->old"):
        assert (features_only.report["comparisons"][key]["verification"]
                == with_models.report["comparisons"][key]["verification"])
    assert features_only.report["data"]["embeddings"]["sha256"]
    with h5py.File(tmp_path / "short.h5", "w") as handle:
        handle["old"], handle["new"] = np.ones((3, 6)), np.ones((3, 6))
    with pytest.raises(BadInput, match="3 rows"):
        run_check(CheckConfig(data=str(tmp_path), embeddings=str(tmp_path / "short.h5")))


def _landmark_run(tmp_path, points):
    rows = [f"{k}.jpg " + " ".join(f"{v:.6f}" for v in points.ravel()) + " 0.9" for k in range(len(FACES))]
    (tmp_path / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(rows) + "\n")
    return run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                     load=ENCODERS.__getitem__).report


def test_ijbc_landmarks_align_faces(tmp_path):
    from gallery.faces.align import template_for

    _write_ijbc(tmp_path, FACES, PAIRS)
    plain = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                      load=ENCODERS.__getitem__).report
    # landmarks already on the template: the warp is the identity, scores are unchanged
    same = _landmark_run(tmp_path, template_for(8))
    shifted = _landmark_run(tmp_path, template_for(8) * 0.7 + 1.0)
    assert same["data"]["aligned"] is True and plain["data"]["aligned"] is False
    thresholds = [r["thresholds"][2]["threshold"] for r in (plain, same, shifted)]
    assert thresholds[1] == pytest.approx(thresholds[0], abs=1e-4)
    assert thresholds[2] != pytest.approx(thresholds[0], abs=1e-3)


@pytest.mark.parametrize("name, content, message", [
    ("ijbc_face_tid_mid.txt", "0.jpg 1\n", "expected 3 columns"),
    ("ijbc_template_pair_label.txt", "1 2 yes\n", "integers"),
    ("ijbc_template_pair_label.txt", "1 99 1\n", "template 99"),
])
def test_ijbc_wrong_files_exit_2(tmp_path, name, content, message):
    _write_ijbc(tmp_path, FACES, PAIRS)
    (tmp_path / "meta" / name).write_text(content)
    old = tmp_path / "x.onnx"
    result = CliRunner().invoke(app, ["check-compat", "--old", str(old), "--new", str(old), "--data", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output


def test_ijbc_csv_wrong_header(tmp_path):
    _write_ijbc(tmp_path, FACES, PAIRS, "TEMPLATE,SUBJECT\n1,100\n", "TEMPLATE_ID,SUBJECT_ID\n2,100\n")
    with pytest.raises(BadInput, match="TEMPLATE_ID and SUBJECT_ID"):
        run_check(CheckConfig(old="old", new="new", data=str(tmp_path)), load=ENCODERS.__getitem__)
