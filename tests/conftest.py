"""Fixtures shared by several test modules (helpers shared as plain functions live in
cli_helpers.py, tiny_models.py, compat_helpers.py, serve_helpers.py, engine_helpers.py; the
torch thread-count fixture and guard in thread_guard.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from cli_helpers import ok, report
# pytest takes hooks and fixtures from the names this module holds, imported ones included
from thread_guard import one_torch_thread, pytest_make_collect_report, torch_threads_unchanged  # noqa: F401


@pytest.fixture(scope="module")
def rollout_base(tmp_path_factory):
    """v1/v2/v3 tiny encoders, a v1 gallery of real digits, a passing and a failing report
    (test_rollout.py, test_rollout_backfill.py; needs torch to export the encoders)."""
    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder, write_digit_folder  # needs torch: imported once it is there

    root = tmp_path_factory.mktemp("rollout")
    for seed, name in enumerate(("v1", "v2", "v3")):
        make_onnx_encoder(root / f"{name}.onnx", seed=seed)
    write_digit_folder(root / "gallery", n_per_class=5, seed=0)
    write_digit_folder(root / "probes", n_per_class=2, seed=1)
    for p in sorted((root / "probes").rglob("*.png")):  # enrolled after the upgrade, distinct ids
        (root / "later" / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "later" / p.parent.name / f"late{p.name}")
    write_digit_folder(root / "eval", n_per_class=6, seed=2)
    store = root / "stores" / "base.h5"  # models outside its folder: recorded absolute, copies find them
    store.parent.mkdir()
    ok("init", store, "--model", root / "v1.onnx")
    ok("enroll", store, "--images", root / "gallery")
    # Random nets: a gate that holds trivially passes; the criterion between independent nets fails.
    passing = report(root, "v1.onnx", "v2.onnx", "pass.json", "--max-new-drop", "1")
    failing = report(root, "v1.onnx", "v2.onnx", "fail.json", "--require-criterion")
    assert json.loads(passing.read_text())["passed"] and not json.loads(failing.read_text())["passed"]
    return root, store, passing, failing


@pytest.fixture
def rollout_work(rollout_base, tmp_path):
    root, store, passing, failing = rollout_base
    copy = tmp_path / "g.h5"
    shutil.copytree(store, copy)
    return root, copy, passing, failing


# The slow lane: tests that take more than a few seconds on a 2-core CPU, or that start
# Python processes (about a second each of imports), left to the full run.
# `pytest -m "not slow"` leaves them out; `pytest` runs everything (CI). A module name marks
# every test in it; a test name every parameter; a parameter that one case. Where a test
# has a cheaper twin that stays in the fast lane, the comment names it.
SLOW = (
    "test_adapter.py",                                             # trains adapters
    "test_cli_store.py::test_cli_export_model_and_init_from_pt",   # trains a model
    "test_compat_cli.py",
    "test_concurrency.py::test_one_writer_four_readers",           # five processes
    "test_datasets_fashion.py::test_open_data_and_open_class_layouts",
    "test_datasets_glyphs.py",
    "test_engines.py",
    "test_engines_cli.py",
    "test_engines_kill.py",
    "test_faces_example.py",
    "test_faces_real.py",
    "test_fault_injection.py",                                     # SIGKILL loops
    "test_front_door.py::test_load_pt_encoder_from_plain_python",
    "test_front_door.py::test_open_and_search_demo_store_from_plain_python",
    "test_front_door.py::test_the_readme_python_example_runs_as_written",  # trains two models
    # a fresh interpreter; the plugin path itself: test_third_party_format_through_the_entry_point
    "test_front_door.py::test_plugin_with_missing_dependency_says_what_is_missing",
    "test_index.py::test_ivf_and_hnsw_recall_at_10_on_20k",
    "test_index_streaming.py::test_memory_estimate_matches_the_serialised_index",
    "test_index_streaming.py::test_store_build_matches_in_memory_build",
    # a reader and a writer process; in one process: test_a_gallery_without_live_keeps_its_snapshot_until_refresh
    "test_live.py::test_a_reader_process_follows_rollback_and_upgrade_of_a_writer_process",
    # unibct's resume (memory bank); nccl's stays
    "test_methods_resume.py::test_resume_equals_uninterrupted[unibct]",
    "test_reliability_cli.py::test_export_serving_is_an_alias_of_sync",
    "test_reliability_env.py",
    "test_rollout_adapter.py",
    "test_rollout_e2e.py",
    "test_rollout_kill.py",
    "test_rollout_script.py",
    "test_rollout_demo.py",
    "test_serve.py",
    "test_serve_switch.py",
    "test_fault_syscalls.py",
    "test_store_upgrade_readers.py",
    "test_store_kill.py",
    # a second writer process per path; the symlink case stays
    "test_store_lock.py::test_second_writer_is_refused_whatever_the_path[bind-mount]",
    "test_store_lock.py::test_second_writer_is_refused_whatever_the_path[info-file-deleted]",
    "test_store_lock.py::test_second_writer_is_refused_whatever_the_path[renamed]",
    "test_store_lock.py::test_fault_shim_counts_and_kills_where_it_says",
    # every other method through `train-compat`; mixbct's run stays (every method trains in test_methods.py)
    "test_train_compat.py::test_every_method_trains_and_records_compatibility[bct]",
    "test_train_compat.py::test_every_method_trains_and_records_compatibility[independent]",
    "test_train_compat.py::test_every_method_trains_and_records_compatibility[l2]",
    "test_train_compat.py::test_every_method_trains_and_records_compatibility[nccl]",
    "test_train_compat.py::test_every_method_trains_and_records_compatibility[unibct]",
    # pytests of their own (torch imported in each); the guard itself runs in every collection
    "test_thread_guard.py::test_guard_fails_a_module_that_sets_threads_at_import_or_leaves_them_set",
    "test_thread_guard.py::test_one_torch_thread_holds_for_its_module_only",
    "test_train_auto.py",
    "test_train_projection.py",
    "test_trainer_ddp.py",
    "test_trainer_ddp_equal.py",
    "test_trainer_fit.py",
    # 24M-65M-parameter nets; their parameter counts: test_iresnet_parameter_counts_match_insightface
    "test_trainer_models.py::test_backbone_shapes_gradients_and_rebuild[iresnet100]",
    "test_trainer_models.py::test_backbone_shapes_gradients_and_rebuild[iresnet18]",
    "test_trainer_models.py::test_backbone_shapes_gradients_and_rebuild[iresnet34]",
    "test_trainer_models.py::test_backbone_shapes_gradients_and_rebuild[iresnet50]",
    "test_trust_fuzz.py::test_fuzz_every_command",                 # ~600 cases in worker processes
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.nodeid.rpartition("/")[2]  # test_x.py::test_y[param]
        module, _, test = name.partition("::")
        if any(entry in (module, f"{module}::{test}", f"{module}::{test.partition('[')[0]}") for entry in SLOW):
            item.add_marker(pytest.mark.slow)
