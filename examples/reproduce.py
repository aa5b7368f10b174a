"""Reproduce the MixBCT comparison on glyph identities, end to end, through the `gallery` CLI.

    python examples/reproduce.py --preset cpu                # quick: one seed, open-class
    python examples/reproduce.py --preset cpu-large --jobs 2 # 3 seeds, both scenarios, every method
    python examples/reproduce.py --preset gpu-medium --jobs N --set train.device=cuda  # the same, larger
    python examples/reproduce.py --preset gpu                # iresnet, 112x112, one GPU

Steps (each skipped when its output already exists, so an interrupted run resumes and
ablations reuse the data and old models):
  1. gallery data glyphs                     -> WORK/data/<scenario>/{old,new}.h5, eval/
     (open-class: disjoint identities; open-data: same identities, disjoint images)
  then per seed of the preset's `seeds` (default: train.seed):
  2. gallery train, per scenario and old kind (weak: softmax, strong: ArcFace)
                                             -> WORK/seed<S>/<scenario>/old/<kind>.pt
  3. per scenario: gallery train (independent, shared by both old kinds), then
     gallery train-compatible per old kind and method (`methods.names`; a params table with
     `method = "bct"` names a variant such as bct-official; `auto` runs --method auto)
                                             -> WORK/seed<S>/<scenario>[/<tag>]/<kind>/<name>.pt
  4. gallery check-compat --reference independent --save-embeddings  -> <name>.check.json
  5. per (seed, scenario) tables, and the pooled comparison with paired bootstrap intervals
     (examples/reproduce_paired.py), rewritten after every seed
                                             -> WORK/results[-<tag>].{md,json,png}

Ablations: `--set methods.params.mixbct.mix_ratio=0.5 --methods mixbct --tag mr05 --reuse-reference`
(method parameters only), or `--set new.epochs=10 --tag ep10` (retrains the reference too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reproduce_report import write_results  # noqa: E402  (sibling module, not a package)


def load_preset(name: str, overrides: list[str]) -> dict:
    path = Path(name) if name.endswith(".toml") else HERE / "presets" / f"{name}.toml"
    if not path.is_file():
        sys.exit(f"error: preset not found: {path}")
    preset = tomllib.loads(path.read_text())
    for item in overrides:
        key, _, raw = item.partition("=")
        if not _:
            sys.exit(f"error: --set expects KEY=VALUE, got {item!r}")
        _assign(preset, key.split("."), _parse(raw))
    return preset


def _parse(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # bare strings: --set new.head=cosface


def _assign(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


class Runner:
    """Runs CLI steps phase by phase (`jobs` at a time), skips finished ones, records cost.

    Each job gets cpu_count // jobs torch threads (OMP_NUM_THREADS): two single-threaded
    trainings use 2 cores better than one two-threaded run of these small convolutions.
    """

    def __init__(self, work: Path, jobs: int, tag: str | None = None) -> None:
        self.work = work
        self.prefix = f"{tag}-" if tag else ""  # ablations keep their own logs
        self.jobs = max(1, jobs)
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds (user+sys) per step: comparable under load
        self.pending: list[tuple[str, Path, list[str], tuple[int, ...]]] = []
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def step(self, name: str, output: Path, args: list[str], ok_codes=(0,)) -> None:
        if output.exists():
            print(f"[skip] {name}: {output.relative_to(self.work)} exists", flush=True)
            return
        self.pending.append((name, output, args, tuple(ok_codes)))

    def flush(self) -> None:
        """Run the queued steps (they must not depend on each other); stop on the first failure."""
        steps, self.pending = self.pending, []
        with ThreadPoolExecutor(self.jobs) as pool:
            failures = [f for f in pool.map(self._run, steps) if f]
        if failures:
            sys.exit("error: " + "; ".join(failures))

    def _run(self, step) -> str | None:
        name, output, args, ok_codes = step
        log_path = self.work / "logs" / f"{self.prefix}{name}.log"
        print(f"[run ] {name}: gallery {' '.join(args[:2])} ... (log: {log_path.relative_to(self.work)})", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // self.jobs))}
        start = time.perf_counter()
        with log_path.open("w") as log:
            log.write(f"$ gallery {' '.join(args)}\n")
            log.flush()
            proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        self.timings[name] = round(seconds, 1)
        self.cpu[name] = round(usage.ru_utime + usage.ru_stime, 1)
        if proc.returncode not in ok_codes or not output.exists():
            return f"step {name} failed (exit {proc.returncode}); see {log_path}"
        print(f"[done] {name} in {seconds:.0f} s ({self.cpu[name]:.0f} CPU-s)", flush=True)
        return None


def train_config(preset: dict, section: dict, data: Path, out: Path) -> dict:
    cfg = {**preset["train"], **section, "data": str(data), "out": str(out)}
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return path


def build_data(run: Runner, preset: dict, scenarios: list[str]) -> Path:
    """Glyph identities; WORK/data/<scenario>/{old,new}.h5 and eval/ per scenario.

    open-class: old and new identities are disjoint. open-data: old and new see the same
    identities with disjoint images (old: the first 30% of each identity's images).
    """
    d = preset["data"]
    out = run.work / "data"
    for scenario in scenarios:
        if scenario not in ("open-class", "open-data"):
            sys.exit(f"error: unknown scenario {scenario!r}; valid: open-class, open-data")
    args = ["data", "glyphs", "--out", str(out), "--identities", str(d["identities"]),
            "--per-identity", str(d["per_identity"]), "--eval-per-identity", str(d["eval_per_identity"]),
            "--image-size", str(d["image_size"]), "--seed", str(d["seed"]),
            "--scenarios", ",".join(scenarios), "--workers", str(d.get("workers", 1)), "--quiet"]
    if "eval_fraction" in d:  # a small training set can still keep ~200 eval identities
        args += ["--eval-fraction", str(d["eval_fraction"])]
    run.step("data", out / "manifest.json", args)
    run.flush()
    return out


def method_entry(preset: dict, name: str) -> tuple[str, dict]:
    """Preset method name -> (registered method, params); `method = "bct"` in a params
    table makes a named variant (bct-official, bct-scaled)."""
    params = dict(preset["methods"].get("params", {}).get(name, {}))
    return params.pop("method", name), params


def train_old(run: Runner, preset: dict, old_data: Path, base: Path, seed: int) -> dict[str, Path]:
    olds = {}
    for kind, section in preset["old"].items():
        out = base / "old" / f"{kind}.pt"
        cfg = write_config(out.with_suffix(".train.json"),
                           {**train_config(preset, section, old_data, out), "seed": seed})
        label = "-".join(base.relative_to(run.work).parts)
        run.step(f"{label}-old-{kind}", out, ["train", "--config", str(cfg), "--json"])
        olds[kind] = out
    return olds


def train_new(run: Runner, preset: dict, data: Path, olds: dict[str, Path], base: Path,
              seed: int, ref: Path | None = None) -> dict:
    """Queue {old kind: {method: new model path}}; independent is shared by all kinds."""
    methods = preset["methods"]["names"]
    label = "-".join(base.relative_to(run.work).parts)
    if ref is None:  # a tagged ablation of method parameters may reuse the untagged reference
        ref = base / "independent.pt"
        ref_cfg = {**train_config(preset, preset["new"], data, ref), "seed": seed}
        run.step(f"{label}-independent", ref, ["train", "--config",
                                               str(write_config(ref.with_suffix(".train.json"), ref_cfg)), "--json"])
    models: dict[str, dict[str, Path]] = {}
    for kind, old in olds.items():
        models[kind] = {"independent": ref}
        for name in (m for m in methods if m != "independent"):
            out = base / kind / f"{name}.pt"
            method, params = method_entry(preset, name)
            cfg = {**train_config(preset, preset["new"], data, out), "seed": seed}
            args = ["train-compatible", "--old", str(old), "--json"]
            if method == "auto":
                args += ["--method", "auto", "--auto-budget", str(params.get("budget", 3))]
            else:
                cfg.update(method=method, method_params=params)
                args += ["--method", method]
            path = write_config(out.with_suffix(".train.json"), cfg)
            run.step(f"{label}-{kind}-{name}", out, args[:1] + ["--config", str(path)] + args[1:])
            models[kind][name] = out
    return models


def check_all(run: Runner, preset: dict, eval_dir: Path, olds: dict[str, Path], models: dict,
              label: str) -> dict[str, dict[str, Path]]:
    """Queue one check-compat per (kind, method); item embeddings are kept for the paired stats."""
    reports: dict[str, dict[str, Path]] = {}
    check = preset.get("check", {})
    for kind, by_method in models.items():
        reports[kind] = {}
        for method, new in by_method.items():
            reference = by_method["independent"]
            folder = new.parent if method != "independent" else reference.parent / kind
            out = folder / f"{method}.check.json"
            folder.mkdir(parents=True, exist_ok=True)
            args = ["check-compat", "--old", str(olds[kind]), "--new", str(new),
                    "--reference", str(reference), "--data", str(eval_dir),
                    "--out", str(out), "--plot", str(out.with_suffix(".png")),
                    "--save-embeddings", str(folder / f"{method}.emb.h5"),
                    "--seed", str(check.get("seed", 0)), "--batch-size", str(check.get("batch_size", 256))]
            run.step(f"{label}-check-{kind}-{method}", out, args, ok_codes=(0, 1))
            reports[kind][method] = out
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="cpu | cpu-large | gpu-medium | gpu | path/to/preset.toml")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default runs/<preset>).")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="Override a preset value, e.g. new.epochs=8 (repeatable).")
    parser.add_argument("--methods", default=None, help="Comma-separated subset of the preset's methods.")
    parser.add_argument("--olds", default=None, help="Comma-separated subset of old kinds (weak,strong).")
    parser.add_argument("--seeds", default=None, help="Comma-separated subset of the preset's seeds.")
    parser.add_argument("--tag", default=None, help="Put new models and results under this tag (ablations).")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="With --tag: keep the untagged independent model (method-parameter ablations).")
    parser.add_argument("--jobs", type=int, default=2, help="Steps run in parallel (each gets cores/jobs threads).")
    parser.add_argument("--copy-results", type=Path, default=None,
                        help="Also copy the results files here after each seed (a run that may be cut short).")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset, args.overrides)
    if args.methods:
        preset["methods"]["names"] = ["independent"] + [m for m in args.methods.split(",") if m != "independent"]
    if args.olds:
        preset["old"] = {k: v for k, v in preset["old"].items() if k in args.olds.split(",")}
    seeds = [int(s) for s in preset.get("seeds", [preset["train"].get("seed", 0)])]
    if args.seeds:
        seeds = [s for s in seeds if str(s) in args.seeds.split(",")]
    scenarios = list(preset.get("scenarios", ["open-class"]))
    work = args.work or Path("runs") / preset.get("name", "custom")
    work.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    (work / f"preset{suffix}.resolved.json").write_text(json.dumps(preset, indent=2, sort_keys=True) + "\n")
    run = Runner(work.resolve(), args.jobs, args.tag)
    start = time.perf_counter()
    data = build_data(run, preset, scenarios)
    paths: dict[int, dict] = {}
    for seed in seeds:
        base = run.work / f"seed{seed}"
        olds = {sc: train_old(run, preset, data / sc / "old.h5", base / sc, seed) for sc in scenarios}
        run.flush()
        models = {}
        for scenario in scenarios:
            folder = base / scenario / args.tag if args.tag else base / scenario
            ref = base / scenario / "independent.pt" if args.reuse_reference else None
            models[scenario] = train_new(run, preset, data / scenario / "new.h5", olds[scenario],
                                         folder, seed, ref)
        run.flush()
        paths[seed] = {scenario: check_all(run, preset, data / scenario / "eval", olds[scenario],
                                           by_kind, f"seed{seed}-{scenario}")
                       for scenario, by_kind in models.items()}
        run.flush()
        md = write_all(run, preset, paths, suffix, time.perf_counter() - start)
        if args.copy_results:
            args.copy_results.mkdir(parents=True, exist_ok=True)
            for path in run.work.glob(f"results{suffix}*"):
                shutil.copy(path, args.copy_results / path.name)
    print(md)


def write_all(run: Runner, preset: dict, paths: dict, suffix: str, total: float) -> str:
    """Per (seed, scenario) tables, then the pooled comparison with paired intervals.

    A failure here is printed, not raised: the next seeds still train, and the per-probe
    hits saved first (results*.hits.npz) let the comparison be recomputed.
    """
    import traceback

    from reproduce_paired import write_comparison

    try:
        reports = {seed: {scenario: {kind: {m: json.loads(p.read_text()) for m, p in by.items()}
                                     for kind, by in by_kind.items()}
                          for scenario, by_kind in by_scenario.items()}
                   for seed, by_scenario in paths.items()}
        for seed, by_scenario in reports.items():
            for scenario, by_kind in by_scenario.items():
                write_results(run.work, f"{suffix}-seed{seed}-{scenario}", preset, by_kind, {}, total)
        return write_comparison(run.work, suffix, preset, paths, reports, run.timings, run.cpu,
                                total, preset.get("report", {}).get("bootstrap", 1000))
    except Exception:  # noqa: BLE001 -- keep training the next seeds; the traceback is shown
        traceback.print_exc()
        return "error: the results could not be written (traceback above)"


if __name__ == "__main__":
    main()
