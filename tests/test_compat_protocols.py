"""Deterministic 1:1 / 1:N protocols vs brute-force enumeration."""

import itertools

import numpy as np
import pytest

from gallery.compat.protocols import (
    ProtocolConfig,
    SearchProtocol,
    impostor_pairs,
    pairs_from_search,
    search_protocol,
    verification_protocol,
)
from gallery.errors import BadInput

LABELS = np.array([3, 1, 3, 2, 1, 3, 5, 2, 2, 2, 7])  # identity 7 has one image


def test_genuine_pairs_are_all_same_identity_pairs():
    protocol = verification_protocol(LABELS, ProtocolConfig(impostor_pairs=10))
    genuine = {(int(a), int(b)) for a, b, s in zip(protocol.left, protocol.right, protocol.issame) if s}
    expected = {(i, j) for i, j in itertools.combinations(range(LABELS.size), 2) if LABELS[i] == LABELS[j]}
    assert genuine == expected


def test_impostor_pairs_all_when_few_exist():
    i, j = impostor_pairs(np.unique(LABELS, return_inverse=True)[1], count=10_000, seed=0)
    expected = {(a, b) for a, b in itertools.combinations(range(LABELS.size), 2) if LABELS[a] != LABELS[b]}
    assert set(zip(i.tolist(), j.tolist())) == expected and len(i) == len(expected)


def test_impostor_sample_is_seeded_distinct_and_valid():
    codes = np.repeat(np.arange(50), 6)
    i, j = impostor_pairs(codes, count=3000, seed=4)
    assert len(i) == 3000
    assert np.all(i < j) and np.all(codes[i] != codes[j])
    assert len(set(zip(i.tolist(), j.tolist()))) == 3000
    i2, j2 = impostor_pairs(codes, count=3000, seed=4)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    i3, _ = impostor_pairs(codes, count=3000, seed=5)
    assert not np.array_equal(i, i3)


def test_search_split_partitions_items():
    labels = np.repeat(np.arange(20), 5)
    config = ProtocolConfig(seed=1, distractor_fraction=0.25, gallery_per_identity=2)
    split = search_protocol(labels, config)
    assert sorted(np.r_[split.gallery, split.probes].tolist()) == list(range(100))
    enrolled = np.unique(split.gallery_labels)
    assert enrolled.size == 15  # 5 of 20 identities are distractors
    assert all(np.sum(split.gallery_labels == k) == 2 for k in enrolled)
    distractors = set(range(20)) - set(enrolled.tolist())
    assert all(np.sum(split.probe_labels == k) == 5 for k in distractors)
    assert split.describe()["num_nonmated_probes"] == 25
    again = search_protocol(labels, config)
    assert np.array_equal(split.gallery, again.gallery) and np.array_equal(split.probes, again.probes)


def test_one_identity_is_bad_input():
    with pytest.raises(BadInput, match="at least 2"):
        verification_protocol(np.zeros(5, int), ProtocolConfig())
    with pytest.raises(BadInput, match="at least 2"):
        search_protocol(np.zeros(5, int), ProtocolConfig())


def test_no_probes_is_bad_input():
    with pytest.raises(BadInput, match="mated probes"):
        search_protocol(np.arange(6), ProtocolConfig(distractor_fraction=0.0))


def test_pairs_from_fixed_search():
    split = SearchProtocol(gallery=np.array([0, 1, 2]), gallery_labels=np.array([10, 11, 12]),
                           probes=np.array([3, 4, 5, 6]), probe_labels=np.array([10, 10, 12, 99]))
    pairs = pairs_from_search(split, ProtocolConfig(impostor_pairs=1000))
    got = {(int(a), int(b), bool(s)) for a, b, s in zip(pairs.left, pairs.right, pairs.issame)}
    expected = {(p, g, lp == lg) for p, lp in zip(split.probes, split.probe_labels)
                for g, lg in zip(split.gallery, split.gallery_labels)}
    assert got == expected


def test_config_validation():
    with pytest.raises(BadInput):
        ProtocolConfig(distractor_fraction=1.0)
    with pytest.raises(BadInput):
        ProtocolConfig(impostor_pairs=0)
