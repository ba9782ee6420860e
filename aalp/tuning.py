"""The tuning study: can any reading of AALP beat ALP once both are tuned above the noise?

The v3 searches (:mod:`aalp.search`) ran 10–13 trials each, mostly TPE's random start-up, and their
completed trials differed by less than the noise of one seed, so they picked noise. This study replaces them
with four stages. Every unit is trained into the profile's run cache and scored on *validation* images only
(APGD-CE + APGD-T on 1,000 class-balanced images held out of the training split,
:func:`aalp.search.validation_score`); no test image chooses anything.

1. **Noise floor.** ALP and AALP at the profile's settings on its comparison seeds (models of the main
   table: their validation score chooses nothing). The seed-to-seed standard deviation ``s`` of a
   configuration's score sets the smallest gap the study calls a difference (:func:`threshold`).
2. **Search.** Every arm of :data:`ARMS` is one reading of the method with its modules fixed; it tunes only
   λ (and β for MART-style weights) with a scrambled, seeded Sobol sequence (optuna's ``QMCSampler``) of
   :attr:`Arm.trials` points, each trained for the profile's full epochs at ``search_run_seed``. There is
   no pruning: on the v3 searches the 2- and 4-epoch scores ranked the 10-epoch ones with a Spearman
   correlation of 0.25–0.88 (6–7 complete trials per dataset), too weak to stop a trial early.
3. **Confirmation.** The best :data:`CONFIRM` trials of each arm are retrained at :data:`CONFIRM_OFFSETS`
   more seeds; a configuration's score is its mean over those 3 seeds. A method's choice is the best mean
   among its arms' confirmed configurations; a lead under :func:`threshold` is reported as a tie.
4. **Finals.** The chosen ALP and AALP configurations on the comparison seeds, evaluated on test once: the
   main table's tuned arms (:func:`aalp.arms.overrides` follows the record's choice), trained and evaluated
   by :func:`run` as soon as a dataset's record has one.

Each (dataset, arm) is one optuna study in an append-only journal file
``results/<profile>/tuning/<dataset>-<arm>.log`` (committed); :func:`record` writes everything to
``results/<profile>/tuning/<dataset>.json``.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import stats
from .arms import COMPARED, SEARCH_METHODS
from .checkpoint import file_lock, write_json
from .config import ConfigError, experiments
from .data import DATASETS
from .runs import ROOT, decode_bits, read_history, results_dir, run_dir
from .search import validation_result_of, validation_score_of
from .selection import study_record, study_record_path
from .unit import Unit

if TYPE_CHECKING:
    import optuna

LAM = (0.1, 10.0)
"""λ, log-uniform, for every arm: two decades around the v3 searches' choices (1.9–4.3) and the profiles' 0.5."""
BETA = (0.1, 10.0)
"""β of the ``mart`` weighting ``1 + β (1 − p_y(x'))``, log-uniform."""
CONFIRM = 2
"""Trials of each arm retrained on more seeds."""
CONFIRM_OFFSETS = (1, 2)
"""The confirmation seeds: ``search_run_seed`` + each (the trial itself is the third seed)."""
SAMPLER_SEED = 0
NOISE_ARMS = ("alp", "aalp")
"""The configurations whose seed-to-seed spread is the noise floor: each method at its profile's settings."""


@dataclass(frozen=True)
class Arm:
    """One reading of a method: its modules fixed (``fixed`` overrides), λ (and β) tuned."""

    name: str
    method: str
    fixed: tuple[str, ...]
    label: str  # a reader's name for the arm (the book's tables and figures)
    beta: bool = False
    trials: int = 4

    def suggest(self, trial: optuna.Trial) -> list[str]:
        """The trial's overrides: ``fixed``, then ``method.lam`` (and ``method.weight_beta``)."""
        out = [*self.fixed, f"method.lam={trial.suggest_float('lam', *LAM, log=True)!r}"]
        if self.beta:
            out.append(f"method.weight_beta={trial.suggest_float('beta', *BETA, log=True)!r}")
        return out


_SW = ("method.guided_dropout=false", "method.weight_normalize=true")
ARMS: tuple[Arm, ...] = (
    Arm("alp", "alp", (), "ALP"),
    Arm("alp-gd", "aalp", ("method.guided_dropout=true", "method.weighting=one", "method.weight_normalize=false"),
        "ALP + Guided Dropout"),
    Arm("sw-p_adv", "aalp", (*_SW, "method.weighting=p_adv"), "weights p_y(x')"),
    Arm("sw-correct", "aalp", (*_SW, "method.weighting=correct"), "weights 1[x' correct]"),
    Arm("sw-mart", "aalp", (*_SW, "method.weighting=mart"), "weights 1 + β(1 − p_y(x'))", beta=True, trials=6),
    Arm("aalp", "aalp", ("method.guided_dropout=true", "method.weighting=p_adv", "method.weight_normalize=true"),
        "AALP (both modules)"),
)
"""The declared arms: ALP; ALP + Guided Dropout (the module alone, defaults); sample weighting alone with the
abstract's direction (``p_adv``: less pairing where x' is misclassified), its hard form (``correct``) and the
opposite direction (``mart``: more pairing there, with β); and both modules (the abstract's AALP). Weights are
batch-normalised (mean 1) so that λ means the same in every arm; without it λ and the weights' mean are one
knob, which tuning λ covers."""


def arm(name: str) -> Arm:
    """The declared arm ``name`` (:class:`ConfigError` naming the choices)."""
    for a in ARMS:
        if a.name == name:
            return a
    raise ConfigError(f"unknown tuning arm {name!r}; choose one of {', '.join(a.name for a in ARMS)}")


def threshold(s: float, seeds: int = 1 + len(CONFIRM_OFFSETS)) -> float:
    """The smallest gap between two configurations' mean scores over ``seeds`` seeds each that the study calls
    a difference: twice the standard error of the gap, ``2 · s · √(2 / seeds)``, with ``s`` the noise floor."""
    return 2 * s * math.sqrt(2 / seeds)


# ----------------------------------------------------------------------------------------------------
# The units of each stage
# ----------------------------------------------------------------------------------------------------

def _check(profile: str, dataset: str) -> None:
    experiments(profile)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def noise_units(profile: str, dataset: str, root: str | Path = ROOT) -> list[Unit]:
    """Stage 1: each :data:`NOISE_ARMS` configuration on the profile's comparison seeds."""
    _check(profile, dataset)
    seeds = experiments(profile).comparison_seeds
    return [Unit(profile, dataset, a, s, root=Path(root)) for a in NOISE_ARMS if a in COMPARED for s in seeds]


def _journal(profile: str, dataset: str, a: Arm, root: str | Path) -> Path:
    return results_dir(profile, Path(root)) / "tuning" / f"{dataset}-{a.name}.log"


def _study(profile: str, dataset: str, a: Arm, root: str | Path) -> optuna.Study:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # QMCSampler's notice
    path = _journal(profile, dataset, a, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    name, storage = f"{profile}/{dataset}/{a.name}", JournalStorage(JournalFileBackend(str(path)))
    sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=SAMPLER_SEED)
    if name in {s.study_name for s in storage.get_all_studies()}:  # reading appends nothing to the journal
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    return optuna.create_study(study_name=name, direction="maximize", storage=storage, sampler=sampler)


def trial_units(profile: str, dataset: str, root: str | Path = ROOT) -> list[Unit]:
    """Stage 2: every arm's :attr:`Arm.trials` trials, asked of its study once (so a rerun asks nothing new
    and gets the same units), each a unit at ``search_run_seed``."""
    _check(profile, dataset)
    seed = experiments(profile).search_run_seed
    units = []
    for a in ARMS:
        with file_lock(_journal(profile, dataset, a, root).with_suffix(".lock")):
            study = _study(profile, dataset, a, root)
            while len(study.trials) < a.trials:
                trial = study.ask()
                trial.set_user_attr("overrides", a.suggest(trial))
            units += [Unit(profile, dataset, a.method, seed, tuple(t.user_attrs["overrides"]),
                           label=f"{a.name} #{t.number}", root=Path(root)) for t in study.trials[: a.trials]]
    return units


def _trials(trials: Sequence[Unit], score: Callable[[Unit], float | None]) -> dict[str, list[dict[str, Any]]]:
    """Per arm, each trial's (of :func:`trial_units`) number, overrides, run and validation score (``None``
    until scored)."""
    out = {}
    for a, units in zip(ARMS, _by_arm(trials)):
        out[a.name] = [{"trial": i, "overrides": list(u.overrides), "params": params(u.overrides),
                        "run": _run(u), "score": score(u)} for i, u in enumerate(units)]
    return out


def _by_arm(units: Sequence[Unit]) -> list[list[Unit]]:
    groups: dict[str, list[Unit]] = {a.name: [] for a in ARMS}
    for u in units:
        groups[(u.label or "").split(" #")[0]].append(u)
    return [groups[a.name] for a in ARMS]


def _run(unit: Unit) -> str:
    from .config import config_hash

    return config_hash(unit.config.train)


def params(overrides: Sequence[str]) -> dict[str, float]:
    """The tuned parameters in ``overrides``: ``{"lam": …, "beta": …}`` (those present)."""
    keys = {"method.lam": "lam", "method.weight_beta": "beta"}
    return {keys[k]: float(v) for k, _, v in (o.partition("=") for o in overrides) if k in keys}


def confirmation_units(profile: str, dataset: str, root: str | Path, score: Callable[[Unit], float | None]
                       ) -> list[Unit]:
    """Stage 3: the best :data:`CONFIRM` scored trials of each arm at the :data:`CONFIRM_OFFSETS` seeds
    (:class:`ConfigError` while a trial of the dataset is not scored yet)."""
    seed = experiments(profile).search_run_seed
    units = []
    for a, trials in zip(ARMS, _by_arm(trial_units(profile, dataset, root))):
        scores = [score(u) for u in trials]
        if any(s is None for s in scores):
            raise ConfigError(f"the {dataset} trials of arm {a.name} are not all scored yet; run the search stage first")
        best = sorted(range(len(trials)), key=lambda i: (-scores[i], i))[:CONFIRM]
        units += [Unit(profile, dataset, a.method, seed + k, trials[i].overrides, label=f"{a.name} #{i}",
                       root=Path(root)) for i in best for k in CONFIRM_OFFSETS]
    return units


# ----------------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------------

def record(profile: str, dataset: str, root: str | Path = ROOT, data_dir: str | Path | None = None
           ) -> dict[str, Any]:
    """Everything the study has measured on ``dataset`` (JSON-ready; written to ``<dataset>.json``): the noise
    floor, every trial, and, once every trial is scored, the confirmations and each method's choice; and the
    lane-hours each stage has trained so far (``train_hours``, scoring not included).

    With the choice comes ``choice_difference``: the chosen AALP minus the chosen ALP on the validation images
    (:func:`aalp.stats.paired_difference` of their per-image bits, seed with seed: the trial's, then each
    confirmation seed's). Both were chosen on these very scores, so it leans towards each winner; the finals
    on the comparison seeds and the test images are the unbiased comparison."""
    root = Path(root)
    runs_dir, data = results_dir(profile, root) / "runs", Path(data_dir) if data_dir else root / "data"

    def score(unit: Unit) -> float | None:
        return validation_score_of(unit, runs_dir, data)

    trials = trial_units(profile, dataset, root)  # asked of the studies once
    noise: dict[str, list[float | None]] = {}
    for u in noise_units(profile, dataset, root):
        noise.setdefault(u.arm, []).append(score(u))
    spreads = [statistics.stdev(v) for v in noise.values() if None not in v and len(v) > 1]
    s = math.sqrt(statistics.mean([x * x for x in spreads])) if spreads else None
    out: dict[str, Any] = {
        "profile": profile, "dataset": dataset, "score": "robust accuracy, APGD-CE + APGD-T, 1,000 class-balanced "
        "validation images (held out of the training split)",
        "noise_floor": {"per_seed": noise, "seeds": list(experiments(profile).comparison_seeds),
                        "sd": s, "threshold": threshold(s) if s is not None else None},
        "arms": [{"name": a.name, "method": a.method, "fixed": list(a.fixed), "trials": a.trials,
                  "tunes": ["lam", *(["beta"] if a.beta else [])]} for a in ARMS],
        "lam_range": list(LAM), "beta_range": list(BETA), "sampler": f"QMCSampler(sobol, scramble, seed={SAMPLER_SEED})",
        "trials": _trials(trials, score), "confirmed": None, "choice": None}
    out["train_hours"] = {"noise floor": _hours(noise_units(profile, dataset, root), runs_dir),
                          "search": _hours(trials, runs_dir), "confirmation": 0.0}
    try:
        confirm = confirmation_units(profile, dataset, root, score)
    except ConfigError:
        return out
    out["train_hours"]["confirmation"] = _hours(confirm, runs_dir)
    units_of: dict[tuple[str, tuple[str, ...]], list[Unit]] = {}  # a configuration's units: trial, then its seeds
    for u in [*trials, *confirm]:
        units_of.setdefault(((u.label or "").split(" #")[0], u.overrides), []).append(u)
    confirmed = []
    for (name, o), units in units_of.items():
        if len(units) == 1 + len(CONFIRM_OFFSETS):
            v = [score(u) for u in units]
            confirmed.append({"arm": name, "method": arm(name).method, "overrides": list(o), "scores": v,
                              "mean": statistics.mean(v) if None not in v else None})
    out["confirmed"] = confirmed
    if any(c["mean"] is None for c in confirmed) or s is None:
        return out
    out["choice"] = {}
    for method in SEARCH_METHODS:
        ranked = sorted((c for c in confirmed if c["method"] == method), key=lambda c: -c["mean"])
        lead = ranked[0]["mean"] - ranked[1]["mean"] if len(ranked) > 1 else None
        out["choice"][method] = {**ranked[0], "lead_over_next": lead,
                                 "tie": lead is not None and lead < out["noise_floor"]["threshold"]}
    bits = {m: np.stack([decode_bits(validation_result_of(u, runs_dir, data)["robust"])
                         for u in units_of[c["arm"], tuple(c["overrides"])]]) for m, c in out["choice"].items()}
    diff = stats.paired_difference(bits["aalp"], bits["alp"])
    out["choice_difference"] = {k: diff[k] for k in ("estimate", "low", "high", "t_low", "t_high", "ceiling",
                                                     "per_seed", "seeds", "images")}
    return out


def _hours(units: Sequence[Unit], runs_dir: Path) -> float:
    """Lane-hours the units have trained so far: every finished epoch's seconds in their histories."""
    return sum(e.get("seconds", 0.0) for u in units for e in read_history(run_dir(u.config.train, runs_dir))) / 3600


def write_record(profile: str, dataset: str, root: str | Path = ROOT) -> Path:
    """:func:`record` written to :func:`aalp.selection.study_record_path`."""
    path = study_record_path(profile, dataset, root)
    write_json(path, record(profile, dataset, root))
    return path


def load_record(profile: str, dataset: str, root: str | Path = ROOT) -> dict[str, Any] | None:
    """The committed record of ``dataset`` (:func:`aalp.selection.study_record`, after checking the names):
    reads only, it neither asks a study for trials nor scores a unit."""
    _check(profile, dataset)
    return study_record(profile, dataset, root)


def planned_units(record: dict[str, Any]) -> int:
    """Units the study of a record's dataset trains in all: the noise floor's, every arm's trials and, for
    each arm, :data:`CONFIRM` configurations at each of :data:`CONFIRM_OFFSETS`."""
    noise = sum(len(v) for v in record["noise_floor"]["per_seed"].values())
    return noise + sum(a["trials"] + min(CONFIRM, a["trials"]) * len(CONFIRM_OFFSETS) for a in record["arms"])


def finished_units(record: dict[str, Any]) -> int:
    """Units of :func:`planned_units` already scored on validation."""
    noise = sum(v is not None for values in record["noise_floor"]["per_seed"].values() for v in values)
    trials = sum(t["score"] is not None for ts in record["trials"].values() for t in ts)
    confirmed = sum(s is not None for c in record["confirmed"] or () for s in c["scores"][1:])
    return noise + trials + confirmed


def tell(profile: str, dataset: str, root: str | Path = ROOT) -> None:
    """Give each scored trial its score in its optuna study (a study's record of what it has seen)."""
    from optuna.trial import TrialState

    runs_dir, data = results_dir(profile, Path(root)) / "runs", Path(root) / "data"
    for a, units in zip(ARMS, _by_arm(trial_units(profile, dataset, root))):
        with file_lock(_journal(profile, dataset, a, root).with_suffix(".lock")):
            study = _study(profile, dataset, a, root)
            for t, u in zip(study.trials, units):
                value = validation_score_of(u, runs_dir, data)
                if t.state == TrialState.RUNNING and value is not None:
                    study.tell(t.number, value)


def final_units(profile: str, dataset: str, root: str | Path = ROOT) -> list[Unit]:
    """Stage 4: the main table's tuned ALP and AALP arms on the comparison seeds, at the study's choice
    (:class:`ConfigError` while the committed record of ``dataset`` has none: :func:`write_record` first)."""
    _check(profile, dataset)
    if not (study_record(profile, dataset, root) or {}).get("choice"):
        raise ConfigError(f"the {dataset} study record has no choice yet; finish the confirmation and write the record")
    return [Unit(profile, dataset, f"{m}-tuned", s, root=Path(root))
            for m in SEARCH_METHODS for s in experiments(profile).comparison_seeds]


Stage = tuple[str, Callable[[], list[Unit]], str]
"""A stage: its name, its units, and what they are scored on (:data:`aalp.grid.SCORES`)."""


def _stages(profile: str, dataset: str, root: Path, score: Callable[[Unit], float | None]) -> tuple[Stage, ...]:
    return (("noise floor", lambda: noise_units(profile, dataset, root), "validation"),
            ("search", lambda: trial_units(profile, dataset, root), "validation"),
            ("confirmation", lambda: confirmation_units(profile, dataset, root, score), "validation"),
            ("finals", lambda: final_units(profile, dataset, root), "test"))


def pending(profile: str, dataset: str, root: str | Path = ROOT) -> tuple[str, list[Unit], str] | None:
    """The first stage of ``dataset``'s study with a unit not done yet: its name, all its units and what they
    are scored on (``None`` once the finals are evaluated). A stage starts only when the one before it is
    finished; the finals follow the committed record's choice."""
    from .grid import is_done

    root = Path(root)
    runs_dir, data = results_dir(profile, root) / "runs", root / "data"

    def score(u: Unit) -> float | None:
        return validation_score_of(u, runs_dir, data)

    for stage, units, scored in _stages(profile, dataset, root, score):
        todo = units()
        if not all(is_done(u, runs_dir, scored, data) for u in todo):
            return stage, todo, scored
    return None


def run(profile: str, datasets: Sequence[str], *, root: str | Path = ROOT, jobs: int = 1,
        log: Callable[[str], None] = print) -> list[Path]:
    """Run the studies of ``datasets`` in ``jobs`` lanes until each one's finals are evaluated; write each
    record after every round.

    Every round runs the :func:`pending` stage of each dataset in the order given, in one grid per kind of
    score (validation; the finals' test evaluation), so the first dataset's confirmation runs before the next
    one's search finishes and the lanes idle only at the end of a grid. Everything is cached: a killed
    study continues where it stopped."""
    from .grid import run_grid

    for d in datasets:
        _check(profile, d)
    root = Path(root)
    runs_dir, data = results_dir(profile, root) / "runs", root / "data"
    def pending_all() -> list[tuple[str, tuple[str, list[Unit], str]]]:
        return [(d, p) for d in datasets if (p := pending(profile, d, root)) is not None]

    paths = [write_record(profile, d, root) for d in datasets]  # the finals follow the record's choice
    ready = pending_all()
    while ready:
        log(f"tuning {profile}: " + "; ".join(f"{d} {stage}, {len(units)} units" for d, (stage, units, _) in ready))
        for kind in dict.fromkeys(scored for _, (_, _, scored) in ready):
            run_grid([u for _, (_, units, scored) in ready if scored == kind for u in units], runs_dir=runs_dir,
                     data_dir=data, jobs=jobs, score=kind, log=log)
        for d, _ in ready:
            tell(profile, d, root)
        paths = [write_record(profile, d, root) for d in datasets]
        after = pending_all()
        if after == ready:
            raise RuntimeError(f"tuning {profile}: a round left every stage as it was; see the grid's log")
        ready = after
    return paths
