"""Points measured on a subsample of each task's examples (spec `evaluation.examples`), on the
really trained toy family: what is stored, what a rerun or a verify measures, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from explorer import cli
from explorer.core.sampling import example_order, examples_for, sampling_variance, shared_variance
from explorer.core.surrogate import QuadraticSurrogate
from explorer.experiment.experiment import Experiment
from explorer.experiment.store import Store
from tests import toy_zoo
from tests.shared_toy import copy_toy, shared_toy


def subsampled_toy(tmp_path_factory, tmp_path, examples, **task_params) -> "Path":  # noqa: F821
    spec = copy_toy(shared_toy(tmp_path_factory), tmp_path / "toy")
    doc = yaml.safe_load(spec.read_text())
    for task in doc["tasks"].values():
        task["evaluator"] = "tests.toy_zoo:scored"
        task["params"].update(task_params)
    doc["evaluation"] = {"examples": examples}
    doc["budget"] = 12
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return spec


def full_scores(exp: Experiment, task: str, c: np.ndarray) -> np.ndarray:
    """Every example's score of the merge at c, straight from the evaluator (the truth to compare with)."""
    exp.engine.merger.apply(c)
    n = exp.n_examples(task)
    return toy_zoo.scored(exp.engine.model, **exp.spec.tasks[task].params, indices=np.arange(n))


def test_design_points_store_the_first_examples_of_one_order_and_verify_scores_only_the_rest(tmp_path_factory, tmp_path,
                                                                                            monkeypatch):
    spec = subsampled_toy(tmp_path_factory, tmp_path, 40)
    log = tmp_path / "indices.log"
    monkeypatch.setenv("TOY_INDEX_LOG", str(log))
    assert cli.main(["run", str(spec), "--no-progress"]) == 0
    exp = Experiment.from_file(spec)
    samples = exp.store.samples(exp.key)
    assert samples and {len(s["scores"]) for s in samples if s["kind"] == "design"} == {40}
    calls = [int(x) for x in log.read_text().split()]
    assert set(calls) <= {40} and len(calls) == len(samples)  # nothing measured on more than asked

    # a stored value is the mean over the first 40 examples of the task's fixed order, at every point
    s = samples[3]
    c, task = np.array(s["coefficients"]), s["task"]
    truth = full_scores(exp, task, c)
    order = example_order(len(truth), exp.task_identities[task])
    assert np.array_equal(s["scores"], truth[order[:40]])
    C, M, _, how = exp.measured_examples()
    row = next(i for i in range(len(C)) if np.allclose(C[i], c))
    assert M[row, exp.tasks.index(task)] == pytest.approx(truth[order[:40]].mean())
    assert how["examples"][row, exp.tasks.index(task)] == 40
    assert how["noise_variance"][row, exp.tasks.index(task)] > 0

    # the page says it, per task, in examples (what a stakeholder reads beside the front)
    from explorer.app_state.handle import ExperimentHandle

    note = ExperimentHandle(exp).examples_note()
    assert note.startswith("Points measured on part of each task's examples (low on 40 of ")
    assert "Picks you verify or polish are measured on every example." in note

    # a rerun measures nothing; a verify of that point scores only the examples it lacks
    log.write_text("")
    assert cli.main(["run", str(spec), "--no-progress"]) == 0
    assert log.read_text() == ""
    values = exp.evaluate(c, "verify")
    n = {t: exp.n_examples(t) for t in exp.tasks}
    assert sorted(int(x) for x in log.read_text().split()) == sorted(n[t] - 40 for t in exp.tasks)
    plain = {t: toy_zoo.accuracy(exp.engine.model, **exp.spec.tasks[t].params) for t in exp.tasks}
    assert values == pytest.approx([plain[t] for t in exp.tasks], abs=1e-6)
    assert Store(exp.store.path).get(exp.key, exp.task_identities[task], c) == pytest.approx(plain[task], abs=1e-6)


@pytest.mark.parametrize("examples, words", [(100000, "more than task"), (0, "positive"), (-5, "positive")])
def test_bad_example_counts_get_one_line_and_exit_2_with_nothing_written(tmp_path_factory, tmp_path, capsys, examples, words):
    spec = subsampled_toy(tmp_path_factory, tmp_path, examples)
    assert cli.main(["run", str(spec), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "examples" in err[0]
    if examples > 0:
        assert "'low'" in err[0]  # names the first task whose set is too small
    assert not (spec.parent / "store.sqlite").exists()


def test_an_evaluator_returning_the_wrong_number_of_scores_is_named_and_nothing_is_stored(tmp_path_factory, tmp_path, capsys):
    spec = subsampled_toy(tmp_path_factory, tmp_path, 30, wrong_length=True)
    assert cli.main(["run", str(spec), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("task ")]  # not the plan
    assert len(err) == 1 and "'low'" in err[0] and "29 per-example scores for 30 examples" in err[0]
    exp = Experiment.from_file(spec)
    assert exp.store.samples(exp.key) == [] and exp.store.count(exp.key) == 0


def test_an_evaluator_without_indices_is_measured_on_its_full_set_and_says_so(tmp_path_factory, tmp_path, capsys):
    spec = subsampled_toy(tmp_path_factory, tmp_path, 30)
    doc = yaml.safe_load(spec.read_text())
    doc["tasks"]["mid"]["evaluator"] = "tests.toy_zoo:accuracy"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert cli.main(["run", str(spec), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "task 'mid': its evaluator takes no `indices`; measured on its full set" in err
    exp = Experiment.from_file(spec)
    assert {s["task"] for s in exp.store.samples(exp.key)} == {"low", "high"}
    C, M, _, how = exp.measured_examples()
    assert len(C) >= 10 and np.all(how["examples"][:, exp.tasks.index("mid")] == 0)


def test_examples_for_keeps_acted_on_points_on_the_full_set():
    assert examples_for("auto", 2000, "design") == 770 and examples_for("auto", 2000, "adaptive") == 1540
    assert examples_for("auto", 300, "design") == 242 and examples_for("auto", 300, "adaptive") == 300
    assert examples_for("auto", 25_000, "design") == 1191
    assert examples_for(256, 2000, "design") == 256
    for kind in ("verify", "polish", "test"):
        assert examples_for("auto", 2000, kind) == 2000 and examples_for(256, 2000, kind) == 2000
    assert examples_for("full", 2000, "design") == 2000


def test_sampling_variance_is_binomial_with_the_finite_population_correction():
    v = np.r_[np.ones(60), np.zeros(40)]
    assert sampling_variance(v, 1000) == pytest.approx(np.var(v, ddof=1) / 100 * 900 / 999)
    assert sampling_variance(v, 100) == 0.0
    assert sampling_variance(np.ones(50), 1000) > 0  # all right on a subsample is not certainty


def test_the_level_error_points_share_is_what_is_left_after_the_correction():
    """All points on one 40-example prefix: their common error is the covariance of their errors on
    those examples (merges that fail the same examples share it; merges that fail independently share
    nothing), which no number of points removes. With three points measured on every example, the
    shorter points are shifted, and what they still share is the uncertainty of that shift; on full
    sets, nothing."""
    rng = np.random.default_rng(0)
    easy = rng.random(1000) < 0.7  # examples most merges get right
    scores = [np.where(rng.random(1000) < 0.9, easy, ~easy).astype(float) for _ in range(12)]
    short = [s[:40] for s in scores]
    cov = np.cov(np.array(short))
    pairs = (cov.sum() - np.trace(cov)) / (12 * 11)
    assert shared_variance(short, 1000) == pytest.approx(pairs / 40 * 960 / 999)
    assert shared_variance(short, 1000) > 0.5 * np.mean([sampling_variance(s, 1000) for s in short])
    independent = [(rng.random(40) < 0.7).astype(float) for _ in range(200)]
    assert shared_variance(independent, 1000) < 0.1 * np.mean([sampling_variance(s, 1000) for s in independent])
    mixed = short[:9] + scores[9:]
    gaps = np.array([scores[a].mean() - scores[a][:40].mean() for a in (9, 10, 11)])
    assert shared_variance(mixed, 1000) == pytest.approx(np.var(gaps, ddof=1) / 3)
    assert shared_variance(mixed, 1000) < 0.2 * shared_variance(short, 1000)
    assert shared_variance(scores, 1000) == 0.0


def test_a_subsampled_front_s_std_holds_the_shared_error_until_picks_are_verified(tmp_path_factory, tmp_path):
    """On the trained toy measured on 40 examples per point, the ± of a new full-set measurement holds
    the error every point shares, and covers the six verified values where the ± without it misses
    one; once they are verified on every example they anchor the level, and the ± shrinks."""
    spec = subsampled_toy(tmp_path_factory, tmp_path, 40)
    assert cli.main(["run", str(spec), "--no-progress"]) == 0
    exp = Experiment.from_file(spec)
    before = exp.result()
    _, _, _, how = exp.measured_examples()
    level = how["shared_variance"]
    assert np.all(level > 0)
    picks = before.front_coefficients[np.linspace(0, len(before.front_coefficients) - 1, 6).astype(int)]
    mean, std = before.predict(picks, return_std=True)
    assert np.all(std >= np.sqrt(level) - 1e-12)
    measured = np.array([exp.evaluate(c, "verify") for c in picks])
    after = exp.result()
    _, std_after = after.predict(picks, return_std=True)
    inside = np.abs(measured - mean) <= 2 * std
    inside_without = np.abs(measured - mean) <= 2 * np.sqrt(np.clip(std**2 - level, 0, None))
    assert np.mean(inside) >= 0.9 and np.mean(inside) > np.mean(inside_without)  # 18 of 18 against 17 of 18
    # verified on every example, the picks anchor the level: the ± shrinks and holds what is left shared
    assert np.mean(std_after) < 0.8 * np.mean(std)
    assert np.all(std_after >= np.sqrt(exp.measured_examples()[3]["shared_variance"]) - 1e-12)


def test_weighting_by_known_noise_brings_the_fit_closer_to_the_full_set_metric():
    """Half the points measured on 20 examples, half on the full set: told the noise, the quadratic
    follows the exact half; not told, it chases the noise (fixed seed: deterministic)."""
    rng = np.random.default_rng(3)
    C = rng.uniform(0, 1, (40, 3))
    z = 0.4 + 1.5 * C[:, 0] - 1.2 * C[:, 1] ** 2 + 0.8 * C[:, 0] * C[:, 2]
    truth = 1 / (1 + np.exp(-z))
    n = np.where(np.arange(40) % 2 == 0, 20, 10_000)
    observed = rng.binomial(n, truth) / n
    noise = np.where(n < 10_000, truth * (1 - truth) / n, 0.0)
    grid = rng.uniform(0, 1, (500, 3))
    true_grid = 1 / (1 + np.exp(-(0.4 + 1.5 * grid[:, 0] - 1.2 * grid[:, 1] ** 2 + 0.8 * grid[:, 0] * grid[:, 2])))
    told = QuadraticSurrogate().fit(C, observed, noise_variance=noise)
    blind = QuadraticSurrogate().fit(C, observed)
    err_told = np.sqrt(np.mean((told.predict(grid) - true_grid) ** 2))
    err_blind = np.sqrt(np.mean((blind.predict(grid) - true_grid) ** 2))
    assert err_told < 0.7 * err_blind


def test_a_subsampled_run_on_ray_stores_what_the_in_process_run_stores(tmp_path_factory, tmp_path, monkeypatch):
    """Ray workers score the examples the driver's plan names and the driver alone stores them: the same
    per-example scores, point for point, as an in-process run, and the same front."""
    ray = pytest.importorskip("ray")
    import os

    from explorer.experiment.executors import make_executor

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(os.getcwd()), os.environ.get("PYTHONPATH", "")]))
    local = Experiment.from_file(subsampled_toy(tmp_path_factory, tmp_path / "local", 40))
    expected = local.run(progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = Experiment.from_file(subsampled_toy(tmp_path_factory, tmp_path / "ray", 40))
        result = remote.run(progress=False, executor=make_executor("ray", num_workers=2))
    finally:
        ray.shutdown()

    def by_point(exp):
        return {(s["task"], tuple(np.round(s["coefficients"], 9))): (s["kind"], s["scores"].tolist())
                for s in exp.store.samples(exp.key)}

    want, got = by_point(local), by_point(remote)
    assert want and {len(v[1]) for v in want.values()} == {40}
    assert got == want
    np.testing.assert_allclose(result.front_predicted, expected.front_predicted, atol=1e-9)
