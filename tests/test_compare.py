"""`merge-explorer compare`: several merge methods on one store, the base measured once, picks measured."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from explorer import cli
from explorer.errors import SpecError
from explorer.experiment.spec import parse_spec
from tests.shared_toy import copy_toy, shared_toy


@pytest.fixture()
def toy(tmp_path_factory, tmp_path):
    return copy_toy(shared_toy(tmp_path_factory), tmp_path / "toy")


def test_compare_measures_the_base_once_and_every_pick(toy, capsys, monkeypatch):
    from explorer.experiment.compare import compare

    monkeypatch.setenv("TOY_CALL_LOG", str(toy.parent / "calls.log"))
    cmp = compare(toy, ["task_arithmetic", "ties"], budget=12, progress=False, n_preferences=4, log=lambda s: None)
    calls = (toy.parent / "calls.log").read_text().splitlines()
    ta, ties = cmp.runs
    # the base (c = 0) is θ₀ for every method: measured by the first run only, served to the second
    assert ta.experiment.model_key == ties.experiment.model_key and ta.experiment.key != ties.experiment.key
    assert len(ties.experiment.stored(np.zeros(3))) == 3
    assert ta.evaluations == 12 + 1 and ties.evaluations == 12  # each its budget and closing point; ties not the base
    # every real evaluation is counted: 3 tasks per point, the runs' points and the measured picks
    assert len(calls) == 3 * cmp.evaluations
    assert cmp.scores.shape == (4, 2) and len(cmp.winners()) == 4
    for method in ("task_arithmetic", "ties"):  # each pick was measured for real and stored as a check
        exp = next(r.experiment for r in cmp.runs if r.method == method)
        for c, m in zip(cmp.picks[method], cmp.measured[method]):
            assert np.allclose(exp.stored_metrics(c), m)
    text = cli.comparison_table(cmp)
    assert "task_arithmetic" in text and "ties" in text and "best pick:" in text


def test_compare_cli_refuses_bad_methods_in_one_line(toy, capsys):
    assert cli.main(["compare", str(toy), "--methods", "task_arithmetic,tsvm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tsvm" in err[0]
    assert cli.main(["compare", str(toy), "--methods", "ties"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert not (toy.parent / "store.sqlite").exists()  # nothing was written


def spec_with(merge: dict) -> dict:
    return {"model": {"family": "state_dict", "base": "b.safetensors"},
            "tasks": {"a": {"checkpoint": "a.safetensors", "evaluator": "m:f"},
                      "b": {"checkpoint": "b.safetensors", "evaluator": "m:f"}},
            "merge": merge}


def test_merge_parameters_are_validated_per_method_with_the_key_named():
    with pytest.raises(SpecError, match=r"merge: .*merge.rank_ratio is not a parameter of merge method 'ties'"):
        parse_spec(spec_with({"method": "ties", "rank_ratio": 0.1}))
    with pytest.raises(SpecError, match=r"unknown merge method 'tie'; did you mean 'ties'"):
        parse_spec(spec_with({"method": "tie"}))
    with pytest.raises(SpecError, match=r"merge.lines.alpha"):
        parse_spec(spec_with({"method": "ties", "lines": {"alpha": -1}}))
    ok = parse_spec(spec_with({"method": "ties", "density": 0.3, "lines": {"beta": 0.2}}))
    assert ok.merge.lines.beta == 0.2 and yaml.safe_dump(ok.model_dump())  # a valid spec round-trips


def test_iso_c_exports_say_not_exact_and_write_the_merge_it_measured(toy, tmp_path):
    """Iso-C is not linear in c: no task_arithmetic config computes it, the export says so in one line,
    and merged.safetensors is the merge the engine evaluates."""
    import torch
    from safetensors.torch import load_file

    from explorer.experiment.experiment import Experiment
    from explorer.export import plan_mergekit, write_merged

    exp = Experiment.from_file(toy, method="iso_c")
    c = np.array([0.6, 0.3, 0.9])
    plan = plan_mergekit(exp, c)
    assert not plan.exact and plan.how.startswith("not exact: iso_c is not linear")
    merged = load_file(str(write_merged(exp, c, tmp_path)["merged"]))
    exp.engine.merger.apply(c)
    for key, value in exp.engine.model.state_dict().items():
        assert torch.allclose(merged[key].float(), value.float(), atol=1e-6), key


def test_a_methods_new_definition_is_keyed_apart_and_shares_the_base(toy, monkeypatch):
    """A method whose definition changed (TSV-M's revision 2: kᵢ = min(k, rank τᵢ)) gets a new content key, so
    no store serves merges of the old definition; the base is still shared, other methods keep their keys."""
    from explorer.experiment import Experiment
    from explorer.merging.methods import get_method

    before = {m: Experiment.from_file(toy, method=m) for m in ("tsv", "ties")}
    monkeypatch.setattr(get_method("tsv"), "revision", get_method("tsv").revision + 1)
    after = {m: Experiment.from_file(toy, method=m) for m in ("tsv", "ties")}
    assert after["tsv"].key != before["tsv"].key and after["tsv"].model_key == before["tsv"].model_key
    assert after["ties"].key == before["ties"].key
