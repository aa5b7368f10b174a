"""The slow-lane list in conftest.py names tests that exist (a renamed test would otherwise
silently move back into the fast lane), and the marker reaches them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import SLOW, pytest_collection_modifyitems

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("entry", SLOW)
def test_slow_entry_names_an_existing_test(entry):
    module, _, test = entry.partition("::")
    assert (TESTS / module).is_file(), f"conftest.SLOW: no {module}"
    if test:
        name = test.partition("[")[0]
        assert re.search(rf"^def {re.escape(name)}\(", (TESTS / module).read_text(), re.M), \
            f"conftest.SLOW: no test {name} in {module}"


class _Item:
    def __init__(self, nodeid: str) -> None:
        self.nodeid, self.markers = nodeid, []

    def add_marker(self, marker) -> None:
        self.markers.append(marker.name)


def test_the_marker_reaches_listed_tests_only(request):
    items = [_Item("tests/test_rollout_kill.py::test_sigkill_at_random_point_then_resume_is_identical[1729]"),
             _Item("tests/test_index.py::test_ivf_and_hnsw_recall_at_10_on_20k"),
             _Item("tests/test_trainer_models.py::test_backbone_shapes_gradients_and_rebuild[iresnet100]"),
             _Item("tests/test_trainer_models.py::test_backbone_shapes_gradients_and_rebuild[small]"),
             _Item("tests/test_index.py::test_flat_search_matches_numpy")]
    pytest_collection_modifyitems(request.config, items)
    assert [i.markers for i in items] == [["slow"], ["slow"], ["slow"], [], []]
    assert request.node.get_closest_marker("slow") is None  # this module stays in the fast lane
