"""An equal-budget, seeded tuning search of ALP and AALP: did the reconstruction fail, or the method?

AALP's design is our reconstruction of an abstract (:class:`aalp.methods.AALP`), so a loss of AALP to ALP
at the defaults could be a bad reconstruction rather than a bad method. This module gives both methods
the same tuning budget on each dataset and selects each one's configuration by the same score.

**Declared search spaces** (:data:`SPACES`): :func:`alp_space` tunes ALP's λ; :func:`aalp_space` tunes
AALP's reconstruction space (Guided Dropout on/off and, when on, its direction, q_min, γ, warm-up and
source branch; the weighting variant, the opposite-direction ``p_wrong`` and ``mart`` included, its β
where it has one; batch-normalised weights; λ). A suggestion becomes ``--set``-style override strings
(``"method.lam=0.7"``), so every trial *is* a normal run of the profile with overrides: cached in the
profile's run cache by its configuration hash, and resumable.

**Seeded search**: :class:`optuna.samplers.TPESampler` and
:class:`optuna.pruners.SuccessiveHalvingPruner` (``min_resource = min_epochs``, ``reduction_factor``,
``min_early_stopping_rate = 0``) over the resumable runs: a trial is trained to each *rung*
(``min_epochs · reduction_factor^k`` epochs, then the run's ``epochs``; :func:`rungs`) with
``train(stop_after=rung)``, scored, reported with ``trial.report(score, rung)``, and trained on only if
``trial.should_prune()`` says it is promising; continuing a run retrains nothing. The sampler of trial
``n`` is seeded with ``seed · 1_000_003 + n``, so every suggestion is a function of the seed and the trials
before it: a search killed and run again asks exactly what an uninterrupted one would.

**Budget**: counted in trained epochs, ``budget_epochs`` per (profile, dataset, method), the same for
ALP and AALP. Spent = the sum, over the distinct runs of the study's trials, of the epochs in each run's
history (``metrics.jsonl``), so the count survives a killed search and reruns. A rung is trained only if
``spent + its new epochs ≤ budget_epochs``; when it is not, the search stops, and a trial it stopped in
the middle stays *paused* (optuna state RUNNING): a later call with a larger budget continues it first,
as does a call after a kill.

**Selection score**: robust accuracy under APGD-CE + APGD-T (:func:`aalp.evaluate.autoattack`,
``version="apgd"``, seed 0) at the run's ``eps`` on a fixed class-balanced subset (seed 0) of at least
``min(1000, data.val_size)`` *validation* images (:func:`aalp.train.validation_set`, held out of the
training split); never a test image. Each score is cached beside its run as ``val-<epoch>-<hash>.json``
with its per-image bits, so rescoring is free.

**Storage and record**: the optuna study lives in an SQLite file ``<search_dir>/<dataset>-<method>.db``
(``results/<profile>/search/`` by default; ``load_if_exists``), guarded by a file lock. After every trial
the record ``<dataset>-<method>.json`` is rewritten: each trial's overrides, run hash, validation score
per rung, state, epochs and wall seconds, and the selected trial. :func:`best_so_far` gives the
best-so-far curve for the book, :func:`best_overrides` the selected configuration for the final
comparison.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import checks
from .arms import SEARCH_METHODS, search_overrides
from .checkpoint import file_lock, write_json
from .config import ConfigError, RunConfig, TrainConfig, check_profile, config_hash, experiments
from .data import ArrayDataset, subset
from .methods import WEIGHTINGS
from .runs import (ROOT, cached_json, encode_bits, load_run, read_config, read_history, results_dir, run_dir,
                   score_path)
from .selection import best_so_far, finished, record_path
from .unit import Unit

if TYPE_CHECKING:
    import optuna

VAL_IMAGES = 1000
"""The least number of validation images a selection score uses (or all of them, if fewer); the default."""
MIN_EPOCHS = 2
"""The default first rung (or the run's epochs, if fewer): the cpu profile ramps ε over its first epoch."""
SCORE_SEED = 0
SCORE_BATCH = 500
SAMPLER_SEED_STRIDE = 1_000_003
TPE_STARTUP = 10
"""Trials TPE draws at random before it models the scores (Optuna's default, stated): a search with fewer
trials than this is a seeded random search, and successive halving is what concentrates its epochs."""

# ----------------------------------------------------------------------------------------------------
# The declared search spaces
# ----------------------------------------------------------------------------------------------------

LAM = (0.05, 5.0)
"""λ, log-uniform, for both methods: two decades around the profiles' 0.5."""


def alp_space(trial: optuna.Trial, epochs: int) -> list[str]:
    """ALP's space: ``lam`` log-uniform in :data:`LAM`."""
    return [f"method.lam={trial.suggest_float('lam', *LAM, log=True)!r}"]


def aalp_space(trial: optuna.Trial, epochs: int) -> list[str]:
    """AALP's reconstruction space (a field not suggested keeps the profile's default):

    - ``lam``: log-uniform in :data:`LAM`, as ALP's;
    - ``guided_dropout``: True / False; when True:
      ``gd_direction`` low / high, ``gd_q_min`` uniform [0.1, 0.9], ``gd_gamma`` log-uniform [0.25, 4],
      ``gd_warmup_epochs`` integer [0, epochs // 2], ``gd_source`` clean / adv;
    - ``weighting``: every variant of :data:`aalp.methods.WEIGHTINGS` (p_adv, exp, ratio, correct, one, and
      the opposite direction p_wrong, mart); for ``exp`` and ``mart`` ``weight_beta`` log-uniform [0.1, 10];
    - ``weight_normalize``: True / False (weights divided by their batch mean).
    """
    lam = trial.suggest_float("lam", *LAM, log=True)
    out = [f"method.lam={lam!r}"]
    gd = trial.suggest_categorical("guided_dropout", [True, False])
    out.append(f"method.guided_dropout={gd}")
    if gd:
        out += [f"method.gd_direction={trial.suggest_categorical('gd_direction', ['low', 'high'])}",
                f"method.gd_q_min={trial.suggest_float('gd_q_min', 0.1, 0.9)!r}",
                f"method.gd_gamma={trial.suggest_float('gd_gamma', 0.25, 4.0, log=True)!r}",
                f"method.gd_warmup_epochs={trial.suggest_int('gd_warmup_epochs', 0, epochs // 2)}",
                f"method.gd_source={trial.suggest_categorical('gd_source', ['clean', 'adv'])}"]
    weighting = trial.suggest_categorical("weighting", list(WEIGHTINGS))
    out.append(f"method.weighting={weighting}")
    if weighting in ("exp", "mart"):
        out.append(f"method.weight_beta={trial.suggest_float('weight_beta', 0.1, 10.0, log=True)!r}")
    out.append(f"method.weight_normalize={trial.suggest_categorical('weight_normalize', [True, False])}")
    return out


SPACES: dict[str, Callable[[optuna.Trial, int], list[str]]] = {"alp": alp_space, "aalp": aalp_space}
"""The declared search space of each method: ``space(trial, epochs) -> overrides``."""


# ----------------------------------------------------------------------------------------------------
# Plan: every input checked before any compute
# ----------------------------------------------------------------------------------------------------

def rungs(epochs: int, min_epochs: int, reduction_factor: int) -> tuple[int, ...]:
    """The epochs at which a trial is scored: the pruner's rungs ``min_epochs · reduction_factor^k`` below
    ``epochs``, then ``epochs`` (e.g. 2, 4, 8, 10 for 10 epochs, 2, 2)."""
    out, rung = [], min_epochs
    while rung < epochs:
        out.append(rung)
        rung *= reduction_factor
    return (*out, epochs)


@dataclass(frozen=True)
class Plan:
    """A checked search: what it tunes, on which base configuration, how it scores and prunes."""

    profile: str
    dataset: str
    method: str
    budget_epochs: int
    seed: int
    overrides: tuple[str, ...]
    min_epochs: int
    reduction_factor: int
    val_images: int
    cfg: RunConfig

    @property
    def rungs(self) -> tuple[int, ...]:
        return rungs(self.cfg.train.epochs, self.min_epochs, self.reduction_factor)

    def trial(self, overrides: Sequence[str]) -> Unit:
        """The unit a trial with the method overrides ``overrides`` trains: the base overrides, then those."""
        return Unit(self.profile, self.dataset, self.method, overrides=(*self.overrides, *overrides))

    def identity(self) -> dict[str, Any]:
        """What a stored study must match to be continued (everything but the budget)."""
        return {"profile": self.profile, "dataset": self.dataset, "method": self.method, "seed": self.seed,
                "overrides": list(self.overrides), "min_epochs": self.min_epochs,
                "reduction_factor": self.reduction_factor, "val_images": self.val_images,
                "base_run": config_hash(self.cfg.train)}


def plan(profile: str, dataset: str, method: str, *, budget_epochs: int, seed: int = 0,
         overrides: Sequence[str] = (), min_epochs: int | None = None, reduction_factor: int = 2,
         val_images: int | None = None) -> Plan:
    """Check every input of a search (:class:`ConfigError` naming the bad one); nothing is computed."""
    check_profile(profile)
    checks.dataset(dataset)
    if method not in SEARCH_METHODS:
        raise ConfigError(f"the search tunes {' and '.join(SEARCH_METHODS)} only, not {method!r}")
    checks.integer("budget_epochs", budget_epochs, 1)
    checks.integer("seed", seed, 0)
    if min_epochs is not None:
        checks.integer("min_epochs", min_epochs, 1)
    checks.integer("reduction_factor", reduction_factor, 2)
    overrides = tuple(overrides)
    tuned = [o for o in overrides if o.strip().startswith("method.")]
    if tuned:
        raise ConfigError(f"the search sets the method's parameters itself; drop {', '.join(map(repr, tuned))}")
    cfg = Unit(profile, dataset, method, overrides=overrides).config
    if min_epochs is None:
        min_epochs = min(MIN_EPOCHS, cfg.train.epochs)
    if min_epochs > cfg.train.epochs:
        raise ConfigError(f"min_epochs ({min_epochs}) cannot exceed the run's epochs ({cfg.train.epochs})")
    if budget_epochs < min_epochs:
        raise ConfigError(f"budget_epochs ({budget_epochs}) cannot train one trial's first rung "
                          f"({min_epochs} epochs)")
    least = min(VAL_IMAGES, cfg.train.data.val_size)
    if val_images is None:
        val_images = least
    if not isinstance(val_images, int) or isinstance(val_images, bool) or not (
            least <= val_images <= cfg.train.data.val_size):
        raise ConfigError(f"val_images must be an integer in [{least}, data.val_size={cfg.train.data.val_size}] "
                          f"(the score uses at least min({VAL_IMAGES}, data.val_size) validation images), "
                          f"got {val_images!r}")
    return Plan(profile, dataset, method, budget_epochs, seed, overrides, min_epochs, reduction_factor,
                val_images, cfg)


# ----------------------------------------------------------------------------------------------------
# The selection score: APGD-CE + APGD-T on validation images, cached beside the run
# ----------------------------------------------------------------------------------------------------

def validation_images(cfg: TrainConfig, data_root: str | Path, n: int) -> ArrayDataset:
    """The fixed images a selection score attacks: a class-balanced subset (seed 0) of ``n`` of the run's
    validation set (:func:`aalp.train.validation_set`, held out of the training split)."""
    from .train import validation_set

    return subset(validation_set(cfg, data_root), n, "balanced", seed=0)


def _score_key(epoch: int, cfg: TrainConfig, n: int) -> dict[str, Any]:
    """What a validation score after ``epoch`` epochs on ``n`` images depends on, beside its run
    (its cache file is :func:`aalp.runs.score_path` of it)."""
    return {"epoch": epoch, "n": n, "val_size": cfg.data.val_size, "eps": cfg.eps,
            "attacks": "autoattack-apgd (APGD-CE + APGD-T)", "seed": SCORE_SEED}


def validation_score(directory: Path, epoch: int, images: ArrayDataset, *,
                     device: str | None = None) -> dict[str, Any]:
    """Robust accuracy of the run in ``directory`` after ``epoch`` epochs under APGD-CE + APGD-T at its
    ``eps`` on ``images`` (validation images only), read from or written to :func:`aalp.runs.score_path`
    under its lock (:func:`aalp.runs.cached_json`: two processes asking at once score it once).

    Raises:
        RuntimeError: the run's checkpoint is not at ``epoch`` and no score of that epoch is cached.
        CheckpointError: the cached score is unreadable; the message says to delete it.
    """
    path = score_path(directory, epoch, _score_key(epoch, read_config(directory), len(images)))
    return cached_json(path, lambda: _score(directory, epoch, images, device), what="validation score",
                       verb="score")


def _score(directory: Path, epoch: int, images: ArrayDataset, device: str | None) -> dict[str, Any]:
    """:func:`validation_score` computed (not yet written)."""
    from .evaluate import autoattack, predict, robust_flags

    finished = len(read_history(directory))
    if finished != epoch:
        raise RuntimeError(f"run {directory} is at epoch {finished}, and its validation score after epoch "
                           f"{epoch} is not cached: it cannot be scored there (use another runs dir)")
    started = time.perf_counter()
    model, cfg = load_run(directory, device)
    x, y = images.to(next(model.parameters()).device).tensors()
    warnings: list[str] = []

    def attack(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x_adv, messages = autoattack(model, a, b, eps=cfg.eps, version="apgd", seed=SCORE_SEED,
                                     batch_size=SCORE_BATCH)
        warnings.extend(messages)
        return x_adv

    clean = predict(model, x, SCORE_BATCH) == y
    robust = robust_flags(model, x, y, attack, eps=cfg.eps, batch_size=SCORE_BATCH, correct=clean,
                          name="APGD-CE + APGD-T")
    result = {"run": Path(directory).name, "epoch": epoch, "n": len(y), "eps": cfg.eps,
              "attacks": "autoattack-apgd", "seed": SCORE_SEED,
              "robust_accuracy": robust.float().mean().item(), "clean_accuracy": clean.float().mean().item(),
              "robust": encode_bits(robust), "clean": encode_bits(clean),
              "autoattack_warnings": warnings, "seconds": time.perf_counter() - started}
    return result


def score_unit(unit: Unit, runs_dir: str | Path, data_dir: str | Path, *, device: str | None = None) -> dict[str, Any]:
    """The selection score of a trained ``unit`` after its last epoch on the default validation images
    (``min(1000, data.val_size)``), computed if not cached."""
    cfg = unit.config.train
    images = validation_images(cfg, data_dir, min(VAL_IMAGES, cfg.data.val_size))
    return validation_score(run_dir(cfg, runs_dir), cfg.epochs, images, device=device)


def validation_result_of(unit: Unit, runs_dir: str | Path, data_dir: str | Path) -> dict[str, Any] | None:
    """The cached result of :func:`score_unit` (score, per-image bits), or ``None`` if it is not computed yet
    (reads only)."""
    cfg = unit.config.train
    path = score_path(run_dir(cfg, runs_dir), cfg.epochs, _score_key(cfg.epochs, cfg, min(VAL_IMAGES, cfg.data.val_size)))
    return json.loads(path.read_text()) if path.exists() else None


def validation_score_of(unit: Unit, runs_dir: str | Path, data_dir: str | Path) -> float | None:
    """The cached selection score of :func:`score_unit`, or ``None`` if it is not computed yet (reads only)."""
    result = validation_result_of(unit, runs_dir, data_dir)
    return None if result is None else result["robust_accuracy"]


# ----------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------

def _default_dirs(profile: str) -> tuple[Path, Path, Path]:
    return results_dir(profile) / "runs", ROOT / "data", results_dir(profile) / "search"


def _silent(message: str) -> None:
    """Training's own log inside a search (the search logs each rung)."""


@dataclass
class SearchResult:
    """A search's record (the JSON export) and where it is."""

    record: dict[str, Any]
    path: Path
    storage: Path

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.record["trials"]

    @property
    def best(self) -> dict[str, Any] | None:
        return self.record["best"]

    @property
    def epochs_spent(self) -> int:
        return self.record["epochs_spent"]

    def curve(self) -> list[dict[str, Any]]:
        """:func:`best_so_far` of this record."""
        return best_so_far(self.record)


class _Search:
    """One call of :func:`search`: the study, the plan, and where runs and data are."""

    def __init__(self, study: optuna.Study, plan: Plan, runs_dir: Path, data_dir: Path, record: Path,
                 images: ArrayDataset, device: str | None, log: Callable[[str], None]) -> None:
        self.study, self.plan, self.runs_dir, self.data_dir = study, plan, runs_dir, data_dir
        self.record, self.images, self.device, self.log = record, images, device, log

    def spent(self) -> int:
        """Epochs trained: the histories of the distinct runs of the study's trials."""
        runs = {t.user_attrs["run"] for t in self.study.get_trials(deepcopy=False) if "run" in t.user_attrs}
        return sum(len(read_history(self.runs_dir / run)) for run in runs)

    def new_trial(self) -> optuna.Trial:
        import optuna

        number = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = optuna.samplers.TPESampler(seed=self.plan.seed * SAMPLER_SEED_STRIDE + number,
                                                          n_startup_trials=TPE_STARTUP)
        trial = self.study.ask()
        overrides = SPACES[self.plan.method](trial, self.plan.cfg.train.epochs)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("run", config_hash(self.plan.trial(overrides).config.train))
        return trial

    def advance(self, trial: optuna.Trial) -> str:
        """Train and score ``trial`` rung by rung from where it stands; ``"complete"``, ``"pruned"``, or
        ``"budget"`` (the next rung does not fit; the trial stays paused)."""
        from optuna.trial import TrialState

        from .train import train

        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        cfg = self.plan.trial(frozen.user_attrs["overrides"]).config.train
        directory = run_dir(cfg, self.runs_dir)
        reported = frozen.intermediate_values
        last = max(reported) if reported else None
        seconds = frozen.user_attrs.get("seconds", 0.0)
        score = reported.get(last) if last is not None else None
        for rung in self.plan.rungs:
            if last is not None and rung < last:
                continue
            if rung != last:
                started = time.perf_counter()
                new = max(0, rung - len(read_history(directory)))
                spent = self.spent()
                if spent + new > self.plan.budget_epochs:
                    self.log(f"trial {trial.number}: epoch {rung} would spend {spent + new} of "
                             f"{self.plan.budget_epochs} epochs; paused")
                    return "budget"
                if new:  # a run already this far (cached) is not even opened
                    train(cfg, runs_root=self.runs_dir, data_root=self.data_dir, device=self.device,
                          stop_after=rung, progress=False, log=_silent)
                score = validation_score(directory, rung, self.images, device=self.device)["robust_accuracy"]
                trial.report(score, rung)
                seconds += time.perf_counter() - started
                trial.set_user_attr("seconds", seconds)
                self.log(f"trial {trial.number} [{directory.name}] epoch {rung}/{cfg.epochs}: validation "
                         f"APGD {score:.2%} ({self.spent()}/{self.plan.budget_epochs} epochs spent)")
            if rung < cfg.epochs and trial.should_prune():
                self.study.tell(trial, state=TrialState.PRUNED)
                self.log(f"trial {trial.number}: pruned after epoch {rung}")
                return "pruned"
        self.study.tell(trial, score)
        return "complete"

    def run(self) -> None:
        import optuna
        from optuna.trial import TrialState

        paused = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        for frozen in sorted(paused, key=lambda t: t.number):  # killed or paused by the budget: continue
            self.log(f"continuing trial {frozen.number}")
            if self.advance(optuna.trial.Trial(self.study, frozen._trial_id)) == "budget":
                return
            self.export()
        while self.spent() + self.plan.rungs[0] <= self.plan.budget_epochs:
            if self.advance(self.new_trial()) == "budget":
                return
            self.export()

    def export(self) -> dict[str, Any]:
        """Write and return the record (see :func:`search`)."""
        record = _record(self.study, self.plan, self.runs_dir)
        write_json(self.record, record)
        return record


def _paths(search_dir: Path, p: Plan) -> tuple[Path, Path]:
    """The study's SQLite storage and its JSON record."""
    return search_dir / f"{p.dataset}-{p.method}.db", search_dir / f"{p.dataset}-{p.method}.json"


def _study_name(p: Plan) -> str:
    return f"{p.profile}/{p.dataset}/{p.method}"


def _check_storage(storage: Path, p: Plan) -> None:
    """Refuse a stored study of another search (read only: nothing is written)."""
    if not storage.exists():
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=_study_name(p), storage=f"sqlite:///{storage.resolve()}")
    except KeyError:
        raise ConfigError(f"{storage} holds no study {_study_name(p)!r}; use another search dir") from None
    stored = study.user_attrs.get("search")
    if stored is None and not study.get_trials(deepcopy=False):
        return  # created by a search killed before it wrote its settings
    if stored != p.identity():
        differ = [k for k in p.identity() if (stored or {}).get(k) != p.identity()[k]]
        raise ConfigError(f"{storage} holds a search with other settings ({', '.join(differ)}); use those, "
                          f"or another search dir")


_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "paused", "FAIL": "failed",
           "WAITING": "waiting"}


def _record(study: optuna.Study, p: Plan, runs_dir: Path) -> dict[str, Any]:
    import optuna

    trials, seen, spent = [], set(), 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        run = t.user_attrs.get("run")
        epochs = len(read_history(runs_dir / run)) if run else 0
        if run not in seen:
            spent += epochs
            seen.add(run)
        trials.append({"number": t.number, "state": _STATES[t.state.name], "params": t.params,
                       "overrides": t.user_attrs.get("overrides", []), "run": run,
                       "scores": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                       "value": t.value if t.state.name == "COMPLETE" else None, "epochs": epochs,
                       "epochs_spent": spent, "seconds": t.user_attrs.get("seconds", 0.0)})
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: (t["value"], -t["number"])) if complete else None
    return {"profile": p.profile, "dataset": p.dataset, "method": p.method, "seed": p.seed,
            "budget_epochs": p.budget_epochs, "epochs_spent": spent, "base_overrides": list(p.overrides),
            "epochs": p.cfg.train.epochs, "rungs": list(p.rungs), "val_images": p.val_images,
            "eps": p.cfg.train.eps, "score": "robust accuracy, APGD-CE + APGD-T (autoattack 'apgd'), "
                                             "class-balanced validation images",
            "sampler": f"TPESampler(seed={p.seed} * {SAMPLER_SEED_STRIDE} + trial number, "
                       f"n_startup_trials={TPE_STARTUP})",
            "pruner": f"SuccessiveHalvingPruner(min_resource={p.min_epochs}, "
                      f"reduction_factor={p.reduction_factor}, min_early_stopping_rate=0)",
            "space": inspect.cleandoc(SPACES[p.method].__doc__ or ""), "optuna": optuna.__version__,
            "trials": trials,
            "best": None if best is None else {
                "number": best["number"], "value": best["value"], "run": best["run"],
                "overrides": [*p.overrides, *best["overrides"]]}}


def search(profile: str, dataset: str, method: str, *, budget_epochs: int, seed: int = 0,
           overrides: Sequence[str] = (), runs_dir: str | Path | None = None, data_dir: str | Path | None = None,
           search_dir: str | Path | None = None, min_epochs: int | None = None, reduction_factor: int = 2,
           val_images: int | None = None, device: str | None = None,
           log: Callable[[str], None] = print) -> SearchResult:
    """Tune ``method`` (alp | aalp) on ``dataset`` with ``budget_epochs`` trained epochs (see the module
    docstring), continuing the stored study if there is one; return the record.

    Args:
        overrides: base ``key=value`` overrides of the profile under every trial (not ``method.*``).
        runs_dir, data_dir, search_dir: default ``results/<profile>/runs``, the repository's ``data/`` and
            ``results/<profile>/search``.
        min_epochs, reduction_factor: the pruner's first rung (default ``min(2, epochs)``) and its factor
            (:func:`rungs`).
        val_images: validation images of the score, at least (and by default) ``min(1000, data.val_size)``.
    """
    import optuna

    p = plan(profile, dataset, method, budget_epochs=budget_epochs, seed=seed, overrides=overrides,
             min_epochs=min_epochs, reduction_factor=reduction_factor, val_images=val_images)
    default_runs, default_data, default_search = _default_dirs(profile)
    runs = Path(runs_dir) if runs_dir is not None else default_runs
    data = Path(data_dir) if data_dir is not None else default_data
    where = Path(search_dir) if search_dir is not None else default_search
    storage, record_file = _paths(where, p)
    _check_storage(storage, p)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"search dir {where} is not a directory")
    images = validation_images(p.cfg.train, data, p.val_images)  # a data error stops here, nothing written
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where.mkdir(parents=True, exist_ok=True)
    with file_lock(where / f".{storage.stem}.lock"):  # one search per storage at a time
        study = optuna.create_study(
            study_name=_study_name(p), storage=f"sqlite:///{storage.resolve()}", direction="maximize",
            load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=p.seed, n_startup_trials=TPE_STARTUP),
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_epochs,
                                                          reduction_factor=p.reduction_factor,
                                                          min_early_stopping_rate=0))
        if "search" not in study.user_attrs:
            study.set_user_attr("search", p.identity())
        _check_storage(storage, p)
        run = _Search(study, p, runs, data, record_file, images, device, log)
        log(f"search {_study_name(p)}: rungs {list(p.rungs)}, {run.spent()}/{p.budget_epochs} epochs spent, "
            f"{len(study.get_trials(deepcopy=False))} trials stored")
        run.run()
        record = run.export()
    best = record["best"]
    log(f"search {_study_name(p)}: {len(record['trials'])} trials, {record['epochs_spent']}/{p.budget_epochs} "
        "epochs; " + ("no trial complete" if best is None else
                      f"best trial {best['number']} ({best['value']:.2%}): {' '.join(best['overrides'])}"))
    return SearchResult(record, record_file, storage)


def declared(profile: str, dataset: str, method: str, root: str | Path = ROOT,
             log: Callable[[str], None] = print) -> SearchResult | None:
    """Run, or continue, ``profile``'s declared search of ``method`` on ``dataset`` under ``root``
    (``search_budget_epochs``, trials at ``search_run_seed``: :class:`aalp.config.Experiments`) unless its
    committed record is finished (:func:`aalp.selection.finished`; then ``None``, nothing is computed)."""
    settings = experiments(profile)
    if finished(record_path(profile, dataset, method, root), settings.search_budget_epochs):
        return None
    where = results_dir(profile, Path(root))
    return search(profile, dataset, method, budget_epochs=settings.search_budget_epochs,
                  overrides=search_overrides(profile), runs_dir=where / "runs", data_dir=Path(root) / "data",
                  search_dir=where / "search", log=log)
