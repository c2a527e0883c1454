"""Real testbeds: reproducible from the seed, CLIP-like trade-offs, batched = single, a truthful margin."""
import numpy as np
import pytest

from explorer.demo.testbeds import make_testbed


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("testbeds")


@pytest.fixture(scope="module")
def testbed(cache):
    return make_testbed("hidden", n_tasks=8, seed=0, cache_dir=cache)


def test_same_seed_same_weights_and_accuracies(testbed, cache):
    fresh = make_testbed("hidden", n_tasks=8, seed=0, cache_dir=None)  # trained again, not read from the cache
    for key, value in testbed.base.items():
        assert np.array_equal(value.numpy(), fresh.base[key].numpy()), key
    for task in testbed.tasks:
        for key, value in testbed.experts[task].items():
            assert np.array_equal(value.numpy(), fresh.experts[task][key].numpy()), (task, key)
    assert sorted(p.name for p in cache.iterdir()) == ["hidden-T8-s0.safetensors"]
    C = np.random.default_rng(0).random((20, 8))
    reloaded = make_testbed("hidden", n_tasks=8, seed=0, cache_dir=cache)
    assert np.array_equal(reloaded.values(C), testbed.values(C))
    assert np.array_equal(fresh.test_values(C), testbed.test_values(C))


def test_experts_beat_the_base_and_task_arithmetic_lies_between(testbed):
    t = testbed.n_tasks
    for values in (testbed.values, testbed.test_values):
        base = values(np.zeros((1, t)))[0]
        experts = np.diag(values(np.eye(t)))
        assert np.all(experts >= base + 0.15), (base, experts)
        lams = np.linspace(0.0, 1.0, 21)
        ta = values(lams[:, None] * np.ones(t)).mean(axis=1)
        assert base.mean() + 0.05 <= ta.max() <= experts.mean() - 0.05


def test_batched_values_equal_single_calls_and_calls_are_counted(testbed):
    C = np.random.default_rng(1).random((30, testbed.n_tasks))
    testbed.n_calls = 0
    single = np.array([list(testbed(c).values()) for c in C])
    assert testbed.n_calls == 30
    assert np.array_equal(testbed.values(C), single)
    assert np.array_equal(testbed.values(C, chunk=7), single)
    assert testbed.evaluate_test(C[0]) == dict(zip(testbed.tasks, testbed.test_values(C[:1])[0]))
    with pytest.raises(ValueError, match="shape"):
        testbed(np.zeros(3))


def test_real_margin_is_zero_on_the_reference_front_and_positive_at_the_base(cache):
    small = make_testbed("hidden", n_tasks=8, seed=0, cache_dir=cache, truth_samples=128, front_size=6)
    X, V = small.reference_front()
    assert len(X) >= 1 and np.array_equal(small.values(X), V)
    t = small.n_tasks
    margins, where, measured = small.real_margin(np.vstack([X[:2], np.zeros(t)]), return_points=True)
    assert np.all(margins[:-1] == 0)
    assert margins[-1] > 0.05  # the base is far inside the front
    base = small.values(np.zeros((1, t)))[0]
    assert np.isclose((measured[-1] - base).min(), margins[-1])  # the margin is witnessed by a real point
    assert np.array_equal(small.values(where[-1:])[0], measured[-1])
    assert small.n_calls == 0  # ground truth is not charged to a method's budget


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown testbed kind 'wide'"):
        make_testbed("wide", cache_dir=None)
    with pytest.raises(ValueError, match="n_tasks=12"):
        make_testbed("hidden", n_tasks=12, cache_dir=None)


@pytest.mark.parametrize("kind", ["fashion-relabel", "fashion-views"])
def test_untuned_testbeds_are_real_trade_offs(kind, cache):
    """The landscapes no constant was tuned on: Fashion-MNIST, other widths, two layers merged. Each
    expert is the best merge for its own task and worse than itself on the others, so the front is a
    real trade-off; merging everything at once loses to the experts on every task."""
    tb = make_testbed(kind, n_tasks=8, seed=0, cache_dir=cache)
    t = tb.n_tasks
    values = tb.values(np.vstack([np.zeros(t), np.eye(t), np.full(t, 0.5)]))
    base, experts, half = values[0], values[1:1 + t], values[-1]
    own = np.diag(experts)
    assert np.all(own > base + 0.05) and np.mean(own - base) > 0.25, (own, base)  # every task learnt something
    # (fashion-views' mirror image is nearly the upright garment: its base is already at 64 %)
    assert np.all(own > half + 0.15)  # no single merge keeps every expert's gain
    off = experts[~np.eye(t, dtype=bool)].reshape(t, t - 1)
    assert np.all(off.mean(axis=1) < own - 0.2)  # each expert gives up the other tasks
    again = make_testbed(kind, n_tasks=8, seed=0, cache_dir=None)  # trained again from the seed
    np.testing.assert_array_equal(again.values(np.eye(t)[:2]), values[1:3])


def test_relabel_tasks_conflict_by_overlap():
    """Relabel tasks rename four consecutive classes cyclically: neighbours disagree on three classes'
    names, tasks four apart on none."""
    from explorer.demo.testbeds import RELABELS, task_labels

    labels = np.arange(10)
    renamed = {t: task_labels(t, labels) for t in RELABELS}
    for t in RELABELS:
        assert sorted(renamed[t]) == list(range(10)) and np.sum(renamed[t] != labels) == 4
    assert np.sum(renamed["cycle0"] != renamed["cycle1"]) == 3
    assert np.sum((renamed["cycle0"] != labels) & (renamed["cycle4"] != labels)) == 0


def test_large_split_is_the_rest_of_fashion_mnist_test_set(cache):
    """The 'large' split the subsampling benchmark measures savings on: 9,200 real images per task,
    none of them in the validation or test split, and a merge's accuracies do not depend on the batch
    (it is evaluated in smaller batches than the other splits)."""
    from explorer.demo.testbeds import _fashion

    splits = _fashion(0)
    large, val, test = (splits[k][0].reshape(len(splits[k][0]), -1) for k in ("large", "validation", "test"))
    assert len(large) == 9200
    seen = {row.tobytes() for row in np.vstack([val, test])}
    assert sum(row.tobytes() in seen for row in large) <= 5  # Fashion-MNIST holds a few pixel-equal images
    tb = make_testbed("fashion-views", n_tasks=8, seed=0, cache_dir=cache)
    C = np.random.default_rng(1).random((6, 8))
    together = tb.values(C, split="large")
    np.testing.assert_array_equal(together, np.vstack([tb.values(c[None], split="large") for c in C]))
    assert together.shape == (6, 8) and np.all((together > 0.05) & (together < 1))
    with pytest.raises(ValueError, match="'large' split is Fashion-MNIST's; testbed 'hidden'"):
        make_testbed("hidden", n_tasks=8, seed=0, cache_dir=cache).values(C, split="large")
