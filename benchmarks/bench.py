"""Throughput of adversarial training and evaluation, against a reference loop and the machine's FLOP floor.

Run from the repository root: ``make bench`` (or ``python benchmarks/bench.py``; ``--quick`` for a
seconds-long check that the harness works). Writes ``benchmarks/results.json`` and the table in
``benchmarks/README.md``. Every ratio is measured in one process, on the same batches, alternating the
two sides repeat by repeat so that drift in the machine's speed hits both.

What is measured (images per second of training, batch 128, PGD-10 training attack):

- ``train``: every method through ``aalp.train.train_one_epoch`` — the loop ``aalp`` trains with (uint8
  data held as one tensor, channels_last model, attacks with ``torch.autograd.grad`` w.r.t. the input).
- ``reference``: :mod:`reference`, PGD-AT in the style of the TRADES / MART scripts; ``ratio`` is ours /
  reference for PGD-AT.
- ``floor``: FLOPs of one PGD-AT step (``torch.utils.flop_counter.FlopCounterMode``) over the machine's
  measured dense rate (best of a float32 matmul and the model's largest convolution) — the time the step
  could take at that rate; ``efficiency`` = floor time / measured time.
- ``eval``: PGD-k images/s, and AutoAttack seconds on a briefly PGD-trained ``fast-cnn`` (its cost grows
  with the points it cannot break, so its robust accuracy is recorded beside it).
- ``precision``: bf16 autocast against float32 — throughput, and the success of the same PGD-20 attack
  on the same model in both precisions (an attack weakened by rounding would overstate robustness).
- ``grid`` (``--only grid`` measures this section alone and keeps the others): units per hour of
  ``aalp.grid.run_grid`` on the same short cpu-profile units (train + evaluate), ``jobs=1`` (one process,
  all cores) against ``jobs=2`` (two lanes, one thread each), alternating A B B A in fresh run caches, with
  the per-unit results of both sides compared; and one unit trained by one process with 2 threads
  against two 1-thread processes under ``torchrun``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import reference  # benchmarks/ is the script's directory, so it is on sys.path

from aalp.attacks import PGD, AttackBudget, pgd
from aalp.data import DATASETS, ArrayDataset, load_dataset
from aalp.grid import run_grid
from aalp.unit import Unit
from aalp.methods import METHODS, make_method
from aalp.models import build_model
from aalp.train import machine, train_one_epoch, warmup_attack
from aalp.runs import read_history

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"fast-cnn": "mnist", "smallcnn": "mnist", "madry-cnn": "mnist", "preact-resnet18": "cifar10"}


def model_for(name: str, channels_last: bool = True) -> torch.nn.Module:
    info = DATASETS[MODELS[name]]
    model = build_model(name, input_shape=info.input_shape, num_classes=info.num_classes, mean=info.mean,
                        std=info.std)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def fake_data(name: str, n: int, seed: int = 0) -> ArrayDataset:
    """``n`` uint8 images of the model's input shape (throughput does not depend on their content)."""
    g = torch.Generator().manual_seed(seed)
    shape = DATASETS[MODELS[name]].input_shape
    return ArrayDataset(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (n,), generator=g))


def attack_for(name: str, steps: int) -> PGD:
    return PGD(0.3 if MODELS[name] == "mnist" else 8 / 255, AttackBudget(steps))


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def summary(rates: list[float]) -> dict[str, float]:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": len(rates)}


def ours(name: str, method: str, data: ArrayDataset, batch: int, steps: int,
         bf16: bool = False) -> Callable[[], None]:
    """A closure that runs one pass of ``aalp``'s training loop over ``data``."""
    torch.manual_seed(0)
    model = model_for(name)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    meth, attack = make_method(method), attack_for(name, steps)
    order = torch.arange(len(data))

    def run() -> None:
        train_one_epoch(model, meth, attack, optimizer, data, order, batch, 0, progress=False, bf16=bf16)
    return run


def brief_model(data_root: Path, batches: int, batch: int = 128) -> tuple[torch.nn.Module, ArrayDataset]:
    """``fast-cnn`` PGD-trained on ``batches`` batches of real MNIST (ε ramped over them), and the test set:
    a model whose points the attacks do not all break at once."""
    train_set, test_set = load_dataset("mnist", "train", data_root), load_dataset("mnist", "test", data_root)
    torch.manual_seed(0)
    model = model_for("fast-cnn")
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    attack, meth = attack_for("fast-cnn", 10), make_method("pgd-at")
    order = torch.randperm(len(train_set))
    for i in range(batches):
        x, y = train_set.batch(order[i * batch:(i + 1) * batch])
        out = meth(model.train(), x, y, warmup_attack(attack, i, batches // 2), 0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return model.eval(), test_set


def theirs(name: str, data: ArrayDataset, batch: int, steps: int) -> Callable[[], None]:
    """A closure that runs one epoch of the reference loop over ``data``."""
    torch.manual_seed(0)
    model = model_for(name, channels_last=False)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    attack = attack_for(name, steps)
    loader = reference.loader(data.images, data.labels, batch)
    return lambda: reference.train_epoch(model, loader, optimizer, attack.eps, attack.step_size, steps)


def dense_rate(name: str, seconds: float = 1.0) -> dict[str, float]:
    """FLOP/s of a 1024² float32 matmul and of the model's largest convolution (forward, batch 128)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    matmul = _rate(lambda: a @ b, 2 * 1024 ** 3, seconds)
    model = model_for(name)
    x = torch.rand(128, *DATASETS[MODELS[name]].input_shape).to(memory_format=torch.channels_last)
    best = 0.0
    inputs: dict[torch.nn.Conv2d, torch.Tensor] = {}

    def keep_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        inputs[module] = args[0]
    hooks = [m.register_forward_hook(keep_input) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for conv, inp in inputs.items():
        with flop_counter() as counter, torch.no_grad():
            conv(inp)
        flops = counter.get_total_flops()
        with torch.no_grad():
            best = max(best, _rate(lambda: conv(inp), flops, seconds / len(inputs)))
    return {"matmul": matmul, "conv": best, "peak": max(matmul, best)}


def _rate(fn: Callable[[], object], flops: float, seconds: float) -> float:
    fn()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or n < 3:
        fn()
        n += 1
    return flops * n / (time.perf_counter() - started)


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s per-module tracker, whose backward hooks make
    ``torch.autograd.grad`` (every attack step) raise; only the global total is needed here."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


def step_flops(name: str, batch: int, steps: int) -> float:
    """FLOPs of one PGD-AT training step of ``aalp`` (attack, forward, backward) on one batch."""
    data = fake_data(name, batch)
    run = ours(name, "pgd-at", data, batch, steps)
    with flop_counter() as counter:
        run()
    return float(counter.get_total_flops())


def train_throughput(name: str, methods: tuple[str, ...], batch: int, steps: int, batches: int,
                     repeats: int) -> dict[str, object]:
    """Images/s of each method and of the reference loop, alternating them within each repeat."""
    data = fake_data(name, batch * batches)
    runners = {m: ours(name, m, data, batch, steps) for m in methods}
    runners["reference"] = theirs(name, data, batch, steps)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():  # warm-up: allocator, oneDNN primitive caches
        fn()
    for _ in range(repeats):
        for key, fn in runners.items():
            rates[key].append(len(data) / timed(fn))
    out: dict[str, object] = {k: summary(v) for k, v in rates.items()}
    if "pgd-at" in rates:
        out["ratio_pgdat_over_reference"] = summary([a / b for a, b in zip(rates["pgd-at"], rates["reference"])])
    if "alp" in rates and "aalp" in rates:  # step time ratio = inverse throughput ratio
        out["ratio_aalp_over_alp_time"] = summary([b / a for a, b in zip(rates["aalp"], rates["alp"])])
    return out


def eval_throughput(model: torch.nn.Module, test: ArrayDataset, batch: int, steps: int, repeats: int,
                    aa_images: int) -> dict[str, object]:
    """PGD-k images/s, and AutoAttack (standard) seconds and accuracy, on ``model``."""
    from aalp.evaluate import autoattack

    attack = attack_for("fast-cnn", steps)
    x, y = test.batch(slice(0, batch))
    pgd_rates = [batch / timed(lambda: pgd(model, x, y, attack.eps, step_size=attack.step_size, steps=attack.steps))
                 for _ in range(repeats + 1)][1:]
    xa, ya = test.batch(slice(0, aa_images))
    started = time.perf_counter()
    x_adv, _ = autoattack(model, xa, ya, eps=attack.eps, version="standard", seed=0, batch_size=500)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == ya).float().mean().item()
        clean = (model(xa).argmax(1) == ya).float().mean().item()
    return {"model": "fast-cnn", f"pgd{steps}_images_per_s": summary(pgd_rates),
            "autoattack": {"images": aa_images, "seconds": seconds, "images_per_s": aa_images / seconds,
                           "clean_accuracy": clean, "robust_accuracy": robust}}


def precision(model: torch.nn.Module, test: ArrayDataset, name: str, batch: int, steps: int, batches: int,
              n_attack: int) -> dict[str, object]:
    """bf16 autocast vs float32: training images/s of ``name``, and PGD-20 success on ``model`` (real test
    images, same random start) in both precisions."""
    data = fake_data(name, batch * batches)
    rates = {}
    for key, bf16 in (("fp32", False), ("bf16", True)):
        fn = ours(name, "pgd-at", data, batch, steps, bf16=bf16)
        fn()
        rates[key] = len(data) / timed(fn)
    x, y = test.batch(slice(0, n_attack))
    attack = attack_for("fast-cnn", 20)
    success = {}
    for key, bf16 in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            x_adv = attack(model, x, y)
        with torch.no_grad():  # judged in float32
            success[key] = (model(x_adv).argmax(1) != y).float().mean().item()
    return {"model": name, "train_images_per_s": rates, "attack_model": "fast-cnn", "attack_images": n_attack,
            "pgd20_success": success}


PROFILES: dict[str, dict[str, object]] = {
    # per model: (batches of 128 per timed pass, repeats); sized to ~2-4 min per model on 2 cores
    "full": {"models": {"fast-cnn": (8, 5), "smallcnn": (4, 5), "madry-cnn": (2, 3), "preact-resnet18": (1, 3)},
             "train_batches": 300, "aa_images": 200, "attack_images": 1000, "pgd_repeats": 5},
    "quick": {"models": {"fast-cnn": (1, 2)}, "train_batches": 4, "aa_images": 8, "attack_images": 16,
              "pgd_repeats": 2},
}
GRID: dict[str, dict[str, object]] = {
    # short cpu-profile units (fast-cnn, PGD-10 training, full cpu evaluation attacks on a subset)
    "full": {"units": 6, "overrides": ("data.train_size=6000", "epochs=1", "eval.n=1000",
                                       "eval.autoattack_n=0"), "repeats": 2, "torchrun_train_size": 12000},
    "quick": {"units": 2, "overrides": ("data.train_size=200", "data.val_size=40", "data.monitor_size=none", "epochs=1", "eval.n=40",
                                        "eval.autoattack_n=0", "eval.pgd.steps=2", "eval.pgd.restarts=1"),
              "repeats": 1, "torchrun_train_size": 200},
}
TARGET_AALP, TARGET_REFERENCE = 1.05, 1.25
"""AALP step time / ALP step time at most this; our PGD-AT images/s / the reference loop's at least this."""
SLOW = ("preact-resnet18",)
"""Models measured on PGD-AT, ALP and AALP only (one step takes seconds on a CPU)."""


def run(profile: str, data_root: Path, out: Path, readme: Path | None, batch: int = 128,
        steps: int = 10) -> dict[str, object]:
    p = PROFILES[profile]
    result: dict[str, object] = {"profile": profile, "machine": machine(), "batch": batch, "attack_steps": steps,
                                 "date": time.strftime("%Y-%m-%d"), "train": {}, "floor": {}}
    for name, (batches, repeats) in p["models"].items():
        methods = ("pgd-at", "alp", "aalp") if name in SLOW else METHODS
        print(f"[bench] {name}: training throughput", flush=True)
        result["train"][name] = train_throughput(name, methods, batch, steps, batches, repeats)
        flops = step_flops(name, batch, steps)
        rate = dense_rate(name, 0.2 if profile == "quick" else 1.0)
        achieved = result["train"][name]["pgd-at"]["median"]
        floor_seconds = flops / rate["peak"]
        result["floor"][name] = {"step_flops": flops, "dense_flops_per_s": rate,
                                 "floor_images_per_s": batch / floor_seconds,
                                 "efficiency": achieved / (batch / floor_seconds)}
        write(result, out, readme)
    print("[bench] evaluation and precision", flush=True)
    model, test = brief_model(data_root, p["train_batches"])
    result["eval"] = eval_throughput(model, test, batch, steps, p["pgd_repeats"], p["aa_images"])
    result["precision"] = precision(model, test, "fast-cnn" if profile == "quick" else "smallcnn", batch,
                                    steps, 1, p["attack_images"])
    print("[bench] grid: --jobs 1 against --jobs 2, and torchrun", flush=True)
    result["grid"] = {"date": result["date"], "machine": machine(), **grid_throughput(profile, data_root)}
    write(result, out, readme)
    return result


def grid_units(profile: str) -> list[Unit]:
    g = GRID[profile]
    methods = ("pgd-at", "alp", "trades", "mart", "aalp", "standard")
    return [Unit("cpu", "mnist", methods[i % len(methods)], i // len(methods), tuple(g["overrides"]))
            for i in range(g["units"])]


def grid_throughput(profile: str, data_root: Path) -> dict[str, object]:
    """Units per hour of ``run_grid`` on the same units (``threads=1``, every profile's setting) with
    ``jobs=1`` and ``jobs=2``, and whether their per-unit results are identical (they must be: a unit's
    identity fixes its training threads); beside them, ``jobs=1`` on the same units at ``threads=2`` (one
    process using both cores, which makes them other units: CPU numerics depend on the thread count). Fresh
    run caches; the sides alternate A B C C B A."""
    units, repeats = grid_units(profile), GRID[profile]["repeats"]
    two_threads = [Unit(u.profile, u.dataset, u.arm, u.seed, (*u.overrides, "threads=2")) for u in units]
    sides = {"jobs1": (units, 1), "jobs2": (units, 2), "jobs1_threads2": (two_threads, 1)}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    summaries: dict[str, list[dict[str, object]]] = {}
    order = [side for r in range(repeats) for side in (list(sides) if r % 2 == 0 else list(sides)[::-1])]
    for side in order:
        chosen, jobs = sides[side]
        runs = Path(tempfile.mkdtemp(prefix=f"aalp-bench-{side}-"))
        try:
            started = time.perf_counter()
            summaries[side] = run_grid(chosen, runs_dir=runs, data_dir=data_root, jobs=jobs,
                                       progress=False, log=lambda s: None)
            rates[side].append(len(chosen) / (time.perf_counter() - started) * 3600)
        finally:
            shutil.rmtree(runs, ignore_errors=True)
    a, b = summaries["jobs1"], summaries["jobs2"]
    same_bits = sum(x["robust"] == y["robust"] and x["run"] == y["run"] for x, y in zip(a, b))
    worst_gap = max(abs(x["worst_case"] - y["worst_case"]) for x, y in zip(a, b))
    median = {side: statistics.median(r) for side, r in rates.items()}
    return {"units": [str(u) for u in units], "cores": len(os.sched_getaffinity(0)),
            "units_per_hour": {side: summary(r) for side, r in rates.items()},
            "speedup_jobs2_over_jobs1": median["jobs2"] / median["jobs1"],
            "speedup_jobs2_over_one_process_2_threads": median["jobs2"] / median["jobs1_threads2"],
            "identical_units": same_bits, "max_worst_case_gap": worst_gap,
            "torchrun": torchrun_comparison(profile, data_root)}


def torchrun_comparison(profile: str, data_root: Path) -> dict[str, float]:
    """Seconds of one epoch of one PGD-AT unit: one process with 2 threads, against two 1-thread processes
    under torchrun (gloo), each in a fresh run cache; and the largest weight difference between the two."""
    from aalp.runs import load_run

    overrides = ["model=fast-cnn", f"data.train_size={GRID[profile]['torchrun_train_size']}", "epochs=1"]
    seconds, directories = {}, {}
    base = Path(tempfile.mkdtemp(prefix="aalp-bench-torchrun-"))
    try:
        for side, launcher, threads in [("one_process_2_threads", [sys.executable], "2"),
                                        ("torchrun_2x1_thread", [sys.executable, "-m", "torch.distributed.run",
                                                                 "--standalone", "--nproc_per_node", "2"], "1")]:
            # the run's own thread count (part of its identity) is what training uses
            side_overrides = [*overrides, f"threads={threads}"]
            env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
                   "OMP_NUM_THREADS": threads}
            subprocess.run([*launcher, "-m", "aalp", "train", "--profile", "cpu", "--method", "pgd-at", "--quiet",
                            "--runs-dir", str(base / side), "--data-dir", str(data_root), "--set", *side_overrides],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            (directories[side],) = (base / side).iterdir()
            seconds[side] = read_history(directories[side])[0]["train_seconds"]
        first, second = (load_run(d, "cpu")[0].state_dict() for d in directories.values())
        gap = max((first[k].float() - second[k].float()).abs().max().item() for k in first)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {**seconds, "speedup": seconds["one_process_2_threads"] / seconds["torchrun_2x1_thread"],
            "max_weight_gap": gap, "train_size": GRID[profile]["torchrun_train_size"]}


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _spread(r: dict[str, float]) -> str:
    return f"{_num(r['median'])} ({_num(r['min'])}–{_num(r['max'])})"


def table(result: dict[str, object]) -> str:
    """The Markdown tables of a result."""
    m = result["machine"]
    lines = [f"Measured {result['date']} on {m['cpu']} ({m['torch_threads']} torch threads, torch {m['torch']}), "
             f"profile `{result['profile']}`, batch {result['batch']}, PGD-{result['attack_steps']} training "
             "attack. Images/s of training: median (min–max) over repeats.", "",
             "| model | method | ours | reference | ours / reference | AALP / ALP step time | FLOP floor | "
             "efficiency |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in result["train"].items():
        floor = result["floor"].get(name, {})
        for method in METHODS:
            if method not in rows:
                continue
            r = rows[method]
            cells = [name, method, _spread(r), "", "", "", "", ""]
            if method == "pgd-at":
                ref, ratio = rows["reference"], rows["ratio_pgdat_over_reference"]
                cells[3] = _spread(ref)
                cells[4] = f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})"
                if floor:
                    cells[6] = _num(floor["floor_images_per_s"])
                    cells[7] = f"{floor['efficiency']:.2f}"
            if method == "aalp" and "ratio_aalp_over_alp_time" in rows:
                ratio = rows["ratio_aalp_over_alp_time"]
                cells[5] = f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})"
            lines.append("| " + " | ".join(cells) + " |")
    verdicts = []
    for name, rows in result["train"].items():
        aalp = rows.get("ratio_aalp_over_alp_time", {}).get("median")
        ours_ref = rows["ratio_pgdat_over_reference"]["median"]
        verdicts.append(f"`{name}`: AALP / ALP step time {aalp:.2f} "
                        f"({'meets' if aalp <= TARGET_AALP else 'misses'} ≤ {TARGET_AALP}), ours / reference "
                        f"{ours_ref:.2f} ({'meets' if ours_ref >= TARGET_REFERENCE else 'misses'} "
                        f"≥ {TARGET_REFERENCE})")
    lines += ["", "Targets, on medians: " + "; ".join(verdicts) + "."]
    if "eval" in result:
        e = result["eval"]
        pgd_key = next(k for k in e if k.startswith("pgd"))
        aa = e["autoattack"]
        lines += ["", f"Evaluation on `{e['model']}` briefly PGD-trained on MNIST (ε = 0.3): "
                  f"{pgd_key.split('_')[0].upper()} {e[pgd_key]['median']:.0f} images/s; AutoAttack standard "
                  f"{aa['images']} images in {aa['seconds']:.1f} s ({aa['images_per_s']:.1f} images/s) at clean "
                  f"{aa['clean_accuracy']:.1%} / robust {aa['robust_accuracy']:.1%}."]
    if "grid" in result:
        g = result["grid"]
        u, t = g["units_per_hour"], g["torchrun"]
        lines += ["", f"Grid (measured {g['date']}, {g['cores']} cores, {len(g['units'])} short cpu-profile units "
                  f"of train + evaluate at 1 training thread, sides alternating): `--jobs 1` {_spread(u['jobs1'])} "
                  f"units/h, `--jobs 2` (two lanes) {_spread(u['jobs2'])} units/h: "
                  f"**{g['speedup_jobs2_over_jobs1']:.2f}×** (target ≥ 1.2); per-unit results identical on "
                  f"{g['identical_units']} of {len(g['units'])} units (largest worst-case gap "
                  f"{g['max_worst_case_gap']:.2%}). The same units at 2 training threads in one process (other "
                  f"units: CPU numerics depend on the thread count) {_spread(u['jobs1_threads2'])} units/h, so two "
                  f"1-thread lanes do {g['speedup_jobs2_over_one_process_2_threads']:.2f}× the units of one "
                  f"2-thread process. One unit ({t['train_size']} images, 1 epoch): one process with 2 threads "
                  f"{t['one_process_2_threads']:.1f} s, torchrun 2 × 1 thread {t['torchrun_2x1_thread']:.1f} s "
                  f"({t['speedup']:.2f}×; largest weight difference {t['max_weight_gap']:.1e})."]
    if "precision" in result:
        p = result["precision"]
        lines += ["", f"bf16 autocast vs float32 ({p['model']} PGD-AT training): "
                  f"{p['train_images_per_s']['bf16']:.0f} vs {p['train_images_per_s']['fp32']:.0f} images/s; "
                  f"PGD-20 success on {p['attack_images']} MNIST test images of `{p['attack_model']}`: "
                  f"bf16 {p['pgd20_success']['bf16']:.1%}, fp32 {p['pgd20_success']['fp32']:.1%}."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- results: begin (written by benchmarks/bench.py) -->", "<!-- results: end -->"


def write(result: dict[str, object], out: Path, readme: Path | None) -> None:
    """Write the JSON, and replace the results block of ``readme``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if readme is not None:
        text = readme.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        readme.write_text(f"{head}{BEGIN}\n{table(result)}{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long check of the harness")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default: benchmarks/results.json)")
    parser.add_argument("--no-readme", action="store_true", help="leave benchmarks/README.md alone")
    parser.add_argument("--only", choices=["grid"], help="measure this section alone; keep the others in --out")
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full"
    out = args.out or Path(__file__).resolve().parent / ("results-quick.json" if args.quick else "results.json")
    readme = None if args.no_readme or args.quick else Path(__file__).resolve().parent / "README.md"
    if args.only == "grid":
        if not out.exists():
            parser.error(f"--only grid keeps the other sections of {out}, which does not exist; run the whole "
                         "benchmark first")
        result = json.loads(out.read_text())
        result["grid"] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                          **grid_throughput(profile, args.data_dir)}
        write(result, out, readme)
    else:
        result = run(profile, args.data_dir, out, readme)
    print(table(result))


if __name__ == "__main__":
    main()
