"""Reproduce the MixBCT claim on glyph identities, end to end, through the `gallery` CLI.

    python examples/reproduce.py --preset cpu                # ~30 min on 2 CPU cores
    python examples/reproduce.py --preset gpu                # iresnet, 112x112, one GPU

Steps (each skipped when its output already exists, so an interrupted run resumes
and ablations reuse the data and old models):
  1. gallery data glyphs                          -> WORK/data (open-class split)
  2. gallery train, per old kind (weak: softmax, strong: ArcFace)  -> WORK/old/<kind>.pt
  3. gallery train (independent, shared by both old kinds), gallery train-compatible --method l2|bct|mixbct
     per old kind                                 -> WORK/new[/<tag>]/<kind>/<method>.pt
  4. gallery check-compat --reference independent -> WORK/.../<method>.check.json
  5. one table (Markdown + JSON) and one plot     -> WORK/results[-<tag>].{md,json,png}

Ablations: `--set methods.params.mixbct.mix_ratio=0.5 --methods mixbct --tag mr05 --reuse-reference`
(method parameters only), or `--set new.epochs=10 --tag ep10` (retrains the reference too).
"""

from __future__ import annotations

import argparse
import json
import os
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


def build_data(run: Runner, preset: dict) -> Path:
    d = preset["data"]
    out = run.work / "data"
    args = ["data", "glyphs", "--out", str(out), "--identities", str(d["identities"]),
            "--per-identity", str(d["per_identity"]), "--eval-per-identity", str(d["eval_per_identity"]),
            "--image-size", str(d["image_size"]), "--seed", str(d["seed"]),
            "--scenarios", "open-class", "--workers", str(d.get("workers", 1)), "--quiet"]
    run.step("data", out / "manifest.json", args)
    run.flush()
    return out / "open-class"


def train_old(run: Runner, preset: dict, data: Path) -> dict[str, Path]:
    olds = {}
    for kind, section in preset["old"].items():
        out = run.work / "old" / f"{kind}.pt"
        cfg = write_config(run.work / "old" / f"{kind}.train.json", train_config(preset, section, data / "old.h5", out))
        run.step(f"old-{kind}", out, ["train", "--config", str(cfg), "--json"])
        olds[kind] = out
    run.flush()
    return olds


def train_new(run: Runner, preset: dict, data: Path, olds: dict[str, Path], tag: str | None,
              reuse_reference: bool = False) -> dict:
    """Return {old kind: {method: new model path}}; independent is shared by all kinds."""
    base = run.work / "new" / tag if tag else run.work / "new"
    methods = preset["methods"]["names"]
    # a tagged ablation that changes the new models' training retrains the reference too;
    # reuse_reference keeps the untagged one (ablations of method parameters only)
    ref = (run.work / "new" if reuse_reference else base) / "independent.pt"
    ref_cfg = train_config(preset, preset["new"], data / "new.h5", ref)
    run.step("new-independent", ref, ["train", "--config", str(write_config(ref.with_suffix(".train.json"), ref_cfg)), "--json"])
    models: dict[str, dict[str, Path]] = {}
    for kind, old in olds.items():
        models[kind] = {"independent": ref}
        for method in (m for m in methods if m != "independent"):
            out = base / kind / f"{method}.pt"
            cfg = train_config(preset, preset["new"], data / "new.h5", out)
            cfg.update(method=method, method_params=preset["methods"].get("params", {}).get(method, {}))
            path = write_config(out.with_suffix(".train.json"), cfg)
            run.step(f"new-{kind}-{method}", out,
                     ["train-compatible", "--config", str(path), "--method", method, "--old", str(old), "--json"])
            models[kind][method] = out
    run.flush()
    return models


def check_all(run: Runner, preset: dict, data: Path, olds: dict[str, Path], models: dict) -> dict:
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
                    "--reference", str(reference), "--data", str(data / "eval"),
                    "--json", str(out), "--plot", str(out.with_suffix(".png")),
                    "--seed", str(check.get("seed", 0)), "--batch-size", str(check.get("batch_size", 256))]
            run.step(f"check-{kind}-{method}", out, args, ok_codes=(0, 1))
            reports[kind][method] = out
    run.flush()
    return {kind: {m: json.loads(p.read_text()) for m, p in by.items()} for kind, by in reports.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="cpu | gpu | path/to/preset.toml")
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default runs/<preset>).")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="Override a preset value, e.g. new.epochs=8 (repeatable).")
    parser.add_argument("--methods", default=None, help="Comma-separated subset of the preset's methods.")
    parser.add_argument("--olds", default=None, help="Comma-separated subset of old kinds (weak,strong).")
    parser.add_argument("--tag", default=None, help="Put new models and results under this tag (ablations).")
    parser.add_argument("--reuse-reference", action="store_true",
                        help="With --tag: keep the untagged independent model (method-parameter ablations).")
    parser.add_argument("--jobs", type=int, default=2, help="Steps run in parallel (each gets cores/jobs threads).")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset, args.overrides)
    if args.methods:
        preset["methods"]["names"] = ["independent"] + [m for m in args.methods.split(",") if m != "independent"]
    if args.olds:
        preset["old"] = {k: v for k, v in preset["old"].items() if k in args.olds.split(",")}
    work = args.work or Path("runs") / preset.get("name", "custom")
    work.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    (work / f"preset{suffix}.resolved.json").write_text(json.dumps(preset, indent=2, sort_keys=True) + "\n")
    run = Runner(work.resolve(), args.jobs, args.tag)
    start = time.perf_counter()
    data = build_data(run, preset)
    olds = train_old(run, preset, data)
    models = train_new(run, preset, data, olds, args.tag, args.reuse_reference)
    reports = check_all(run, preset, data, olds, models)
    total = time.perf_counter() - start
    md = write_results(run.work, suffix, preset, reports, run.timings, total, run.cpu)
    print(md)


if __name__ == "__main__":
    main()
