"""Bad notebook parameters (what papermill injects) fail before any compute, with one clear message, and
write no run directory and no results."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

from aalp.config import ConfigError
from aalp.experiments import Study
from aalp.parameters import check_parameters

pytestmark = pytest.mark.faults

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

BAD = [
    ({"dataset": "imagenet"}, "dataset"), ({"dataset": 3}, "dataset"),
    ({"datasets": []}, "datasets"), ({"datasets": ["mnist", "nope"]}, "datasets"),
    ({"datasets": "mnist"}, "datasets"),
    ({"seed": -1}, "seed"), ({"seed": "0"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"seeds": [0, -2]}, "seeds"), ({"seeds": 3}, "seeds"), ({"seeds": []}, "seeds"),
    ({"methods": ["alp", "fgsm-at"]}, "methods"), ({"methods": "alp"}, "methods"),
    ({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fraction": "half"}, "fraction"),
    ({"k": 0}, "k"), ({"k": 2.0}, "k"),
    ({"n_images": 0}, "n_images"), ({"n_train": -5}, "n_train"),
    ({"lams": [0.5, -1]}, "lams"), ({"lams": []}, "lams"),
    ({"steps": [0, 10]}, "steps"), ({"square_queries": 0}, "square_queries"),
    ({"full_audit_seeds": [-1]}, "full_audit_seeds"), ({"full_audit_seeds": []}, "full_audit_seeds"),
    ({"sead": 1}, "sead"),
]


@pytest.mark.parametrize("params, needle", BAD)
def test_bad_parameter_table(params: dict, needle: str, record_fault) -> None:
    record_fault("bad notebook parameter")
    expected = "unknown notebook parameter 'sead'" if needle == "sead" else f"^notebook parameter {needle} = "
    with pytest.raises(ConfigError, match=expected) as info:  # names the parameter that is wrong
        check_parameters(**params)
    assert "\n" not in str(info.value)


def test_good_parameters_pass() -> None:
    check_parameters(dataset="mnist", datasets=None, seed=0, seeds=[0, 1, 2], methods=["alp", "aalp"],
                     fraction=0.5, k=10, n_images=None, n_train=100, lams=[0.25, 1], steps=None,
                     square_queries=5000)


@pytest.mark.parametrize("profile", ["huge", "", None])
def test_unknown_profile(profile: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="profile"):
        Study(profile, tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("notebook, params, needle", [
    ("04_main_results", {"profile": "huge"}, "unknown profile"),
    ("04_main_results", {"seeds": "0,1"}, "seeds"),
    ("01_feature_contribution", {"fraction": 2.0}, "fraction"),
    ("06_robustness_audit", {"full_audit_seeds": "0"}, "full_audit_seeds"),
    ("05_ablation", {"lams": [-1.0]}, "lams"),
])
def test_through_papermill(notebook: str, params: dict, needle: str, tmp_path: Path, record_fault) -> None:
    record_fault("bad parameter injected through papermill")
    out = tmp_path / f"{notebook}.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"), str(out),
                                   parameters={"root": str(tmp_path), **params}, kernel_name="python3",
                                   cwd=str(NOTEBOOKS), progress_bar=False)
    assert info.value.ename == "ConfigError" and needle in info.value.evalue
    assert nbformat.read(out, 4).metadata["papermill"]["exception"], "the failed notebook looks like a success"
    assert not (tmp_path / "results").exists(), "a failed notebook wrote results or a run directory"


def _declared(notebook: str) -> dict:
    return {name: p["default"] for name, p in papermill.inspect_notebook(str(NOTEBOOKS / f"{notebook}.ipynb")).items()}


def test_every_notebook_declares_its_parameters_as_none_and_resolve_fills_them() -> None:
    """The defaults live in one place (aalp.parameters.DEFAULTS): every notebook declares exactly those
    parameters (plus profile and root), each as None, and resolve fills each from the profile."""
    from aalp.config import experiments
    from aalp.parameters import DEFAULTS, resolve
    from aalp.reproduce import NOTEBOOKS as ORDERED

    assert list(DEFAULTS) == list(ORDERED)
    for notebook, defaults in DEFAULTS.items():
        declared = _declared(notebook)
        assert set(declared) == {"profile", "root", *defaults}, notebook
        assert all(declared[name] == "None" for name in declared if name != "profile"), notebook
    cpu = experiments("cpu")
    p = resolve("cpu", "06_robustness_audit")
    assert p["seeds"] == list(cpu.seeds) and p["full_audit_seeds"] == [cpu.seeds[0]] and p["n_images"] == cpu.audit_n
    assert resolve("cpu", "06_robustness_audit", seeds=[3, 4])["full_audit_seeds"] == [3]  # from the seeds given
    assert resolve("cpu", "05_ablation")["tuned_ablation_seeds"] == list(cpu.comparison_seeds[:3])
    assert resolve("smoke", "01_feature_contribution", k=3)["k"] == 3


@pytest.mark.parametrize("notebook, params, needle", [
    ("04_main_results", {"lams": [1.0]}, "04_main_results takes no parameter lams"),
    ("nope", {}, "unknown notebook 'nope'"), ("04_main_results", {"seeds": [-1]}, "seeds = [-1]")])
def test_resolve_refuses_what_a_notebook_does_not_take(notebook: str, params: dict, needle: str, record_fault) -> None:
    from aalp.parameters import resolve

    record_fault("bad notebook parameter")
    with pytest.raises(ConfigError) as info:
        resolve("cpu", notebook, **params)
    assert needle in str(info.value) and "\n" not in str(info.value)
