"""Every chapter's figures are readable on a phone: built from small inputs (the committed smoke results
where a chapter's figure reads only those, synthetic records otherwise), each figure's smallest text is
at least 9 px once the saved image is scaled to a phone's ~360 px of page, no legend sits on an axes, and
no two tick labels of an axis overlap (the main-results bar chart names its attacks)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from aalp import tuning as tuning_study
from aalp.chapters import ablation, cost, main_results, masking, observation1, observation2, study, tuning
from aalp.figures import METHOD_ORDER, WIDTH, setup
from tests.test_chapter_study import _confirmed, _record as _study_record
from tests.test_chapter_tuning import _tuning
from tests.test_chapters import _ablation, _models, _per_image

ROOT = Path(__file__).resolve().parents[1]
PHONE_PX = 360
"""The page's width on a 390 px phone, less its margins: a wider image is scaled down to it."""
MIN_PX = 9
DATASETS = ["mnist", "fashion-mnist"]


def _main() -> main_results.MainResults:
    """The smoke profile's main results as the notebook computed them (results/smoke/*main_results.json)."""
    d = json.loads(next((ROOT / "results" / "smoke").glob("*main_results.json")).read_text())
    return main_results.MainResults(
        d["datasets"], d["seeds"], d["methods"], {}, {k: pd.DataFrame(v) for k, v in d["per_run"].items()},
        d["comparisons"], d["best"], {k: pd.DataFrame(v).set_index("class") for k, v in d["by_class"].items()}, {})


def _observation1() -> observation1.Observation1:
    methods = ["standard", "pgd-at", "trades", "mart", "alp", "aalp"]
    per_image = _per_image({("penultimate", "pgd-at"): {observation1.PRIMARY: 0.1}}, datasets=tuple(DATASETS),
                           methods=tuple(methods))
    models = _models(per_image, {m: 0.1 * i for i, m in enumerate(methods)})
    return observation1.summarise(per_image, models, dataset="mnist", seed=0, datasets=DATASETS, seeds=[0, 1, 2],
                                  methods=methods, n_images=len(per_image.image.unique()), fraction=0.5, k=10,
                                  profile="test")


def _observation2() -> observation2.Observation2:
    rng = np.random.default_rng(0)
    history = pd.DataFrame([{"method": m, "seed": s, "epoch": e, "obs2_conflict": rng.uniform(0, 0.5),
                             "obs2_opposes": rng.uniform(0, 0.8), "obs2_weight_conflict": rng.uniform(0, 1),
                             "obs2_weight_other": rng.uniform(0, 1)}
                            for m in observation2.METHODS for s in (0, 1) for e in range(1, 9)])
    samples = pd.DataFrame([{"method": m, "ce_adv": rng.uniform(0, 3), "pairing part": rng.uniform(1e-3, 1),
                             "in conflict": rng.choice(["no", "yes"])} for m in observation2.METHODS for _ in range(50)])
    return observation2.Observation2("mnist", 0, [0, 1], 50, {}, history, pd.DataFrame(), samples, {}, {},
                                     {"obs2_trace_size": 64})


def _cost() -> cost.Cost:
    methods = [m for m in METHOD_ORDER if "tuned" not in m]
    frame = pd.DataFrame([{"dataset": d, "device": "cpu", "threads": 1, "method": m, "seed": s,
                           "seconds_per_epoch": 10.0 + i + s} for d in DATASETS for i, m in enumerate(methods)
                          for s in (0, 1)])
    history = [{"correct_adv": 0.9 - 0.1 * e, "adv_easier": 0.05 * e} for e in range(6)]
    runs = {d: {m: [SimpleNamespace(history=history if m != "standard" else [{}])] for m in methods} for d in DATASETS}
    curve = pd.DataFrame([{"method": m, "epoch": e, "training minutes": e * (1 + i),
                           "validation PGD accuracy": 0.1 * e} for i, m in enumerate(methods) for e in range(1, 6)])
    facts = {"cost_curve_dataset": "fashion-mnist", "cost_curve_seed": 0, "cost_val_steps": 10, "cost_val_eps": 0.1,
             "cost_monitor_size": 500, "cost_val_size": 5000}
    return cost.Cost(DATASETS, [0, 1], methods, runs, frame, pd.DataFrame(), curve, [], facts)


def _audits() -> masking.Audits:
    methods = list(METHOD_ORDER)
    attacks = ["clean", "FGSM", "PGD", "CW", "AutoAttack", "audit CE-PGD-20, restarts",
               "audit CE-PGD-20, no random start", "audit CW-PGD-20, restarts", "audit CW-PGD-20, no random start",
               "Square", "transfer"]
    audits = {(d, m, 0, True): {"steps_curve": [{"steps": n, "accuracy": 0.5 / n ** 0.2} for n in (1, 5, 20, 100)],
                                "eps_curve": [{"eps": e, "accuracy": 0.5 - e} for e in (0.0, 0.1, 0.2, 0.3)]}
              for d in DATASETS for m in methods}
    strength = pd.DataFrame([{"dataset": d, "method": m, "seed": 0, "step": i, "attacks": a,
                              "accuracy": 0.5 - 0.02 * i - 0.01 * j}
                             for d in DATASETS for j, m in enumerate(methods) for i, a in enumerate(attacks)])
    return masking.Audits(DATASETS, [0], [0], methods, pd.DataFrame(), audits, {}, strength, pd.DataFrame())


def _tuning_record() -> tuning.Tuning:
    result = _tuning()
    result.facts["tune_budget"] = 16
    return result


def _study() -> study.TuningStudy:
    """MNIST confirmed (every arm's best two trials on three seeds), Fashion-MNIST still searching."""
    scores = {(a.name, i): [0.70 + 0.01 * i, 0.69 + 0.004 * k, 0.71 - 0.003 * k]
              for k, a in enumerate(tuning_study.ARMS) for i in (2, 3)}
    return study.TuningStudy("cpu", {"mnist": _confirmed(_study_record(4), scores), "fashion-mnist": _study_record(2)}, {})


FIGURES: dict[str, Callable[[], Iterator[Any]]] = {
    "main results": lambda: (f(r) for r in [_main()] for f in (main_results.plot_accuracy, main_results.plot_difference,
                                                                 main_results.plot_by_class)),
    "observation 1": lambda: (f(r) for r in [_observation1()] for f in (observation1.plot_distribution,
                                                                        observation1.plot_paired, observation1.plot_predicts)),
    "observation 2": lambda: (f(r) for r in [_observation2()] for f in (observation2.plot_over_training,
                                                                        observation2.plot_per_sample)),
    "ablation": lambda: (f(r) for r in [_ablation({"AALP": 0.1}, {"AALP": 0.05})]
                         for f in (ablation.plot_comparison, ablation.plot_concentration)),
    "cost": lambda: (f(r) for r in [_cost()] for f in (cost.plot_epoch_seconds, cost.plot_curve, cost.plot_training_attack)),
    "audit": lambda: (f(r) for r in [_audits()] for f in (masking.plot_curves, masking.plot_strength)),
    "tuning": lambda: (f(r) for r in [_tuning_record()] for f in (tuning.plot_best_so_far, tuning.plot_lam)),
    "tuning study": lambda: (f(r) for r in [_study()] for f in (study.plot_expected_best, study.plot_confirmed)),
}


@pytest.fixture
def theme() -> Iterator[None]:
    """The book's theme (what every notebook's setup line calls), undone after the test."""
    with matplotlib.rc_context():
        setup()
        yield


def _texts(fig: Any) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _overlap(a: Any, b: Any) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _tick_labels(axis: Any) -> list[Text]:
    return [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text().strip()]


def _draw(fig: Any) -> Any:
    """Draw a (closed) figure on an Agg canvas, as saving it does; its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _check(fig: Any) -> None:
    renderer = _draw(fig)
    width = fig.get_tightbbox(renderer).width + 2 * 0.1  # as saved and shown: bbox_inches="tight", 0.1 in pad
    assert width <= WIDTH + 0.5, f"{width:.1f} in wide"
    for text in _texts(fig):
        px = text.get_fontsize() * PHONE_PX / (72 * width)
        assert px >= MIN_PX, f"{text.get_text()!r}: {text.get_fontsize()} pt is {px:.1f} px on a phone"
    for ax in fig.axes:
        assert ax.get_legend() is None, "a legend inside an axes can cover its data: legend_below"
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in _tick_labels(axis)]
            for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
                assert not _overlap(a, b), f"tick labels {i} and {j} overlap: {[t.get_text() for t in _tick_labels(axis)]}"
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not _overlap(box, ax.get_tightbbox(renderer)), "the legend covers an axes"


@pytest.mark.parametrize("chapter", FIGURES)
def test_every_figure_is_readable_at_phone_width(chapter: str, theme: None) -> None:
    for fig in FIGURES[chapter]():
        _check(fig)


def test_the_main_bar_chart_names_its_attacks_under_every_panel(theme: None) -> None:
    result = _main()
    fig = main_results.plot_accuracy(result)
    _draw(fig)
    attacks = [c for c in result.frames[result.datasets[0]].columns if c not in main_results._NOT_ATTACKS]
    for ax in fig.axes:
        shown = [t.get_text() for t in _tick_labels(ax.xaxis)]
        assert shown == [main_results.attack_label(a) for a in attacks]
    assert main_results.attack_label("pgd10") == "PGD-10" and main_results.attack_label("worst_case") == "worst case"
