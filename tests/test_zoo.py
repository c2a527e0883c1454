import json
import time

import pytest
import torch
from safetensors.torch import load_file

from explorer.demo import zoo
from explorer.suites import clip as clip_suite


def manifest(zoo_dir):
    return json.loads((zoo_dir / zoo.MANIFEST).read_text())


@pytest.mark.slow
def test_manifest_records_files_accuracies_and_bars(quick_zoo):
    m = manifest(quick_zoo)
    assert m["architecture"] == zoo.ARCHITECTURE and m["config_hash"] == zoo.zoo_config("quick").hash()
    tasks = zoo.zoo_config("quick").tasks
    assert len(tasks) >= 4 and set(m["tasks"]) == set(tasks)
    for name, digest in m["files"].items():
        assert zoo._sha256(quick_zoo / name) == digest
    for t in tasks:
        row = m["tasks"][t]
        assert {"base", "expert", "best_task_arithmetic", "best_lambda"} <= set(row)
        assert all(0.0 <= row[k] <= 1.0 for k in ("base", "expert", "best_task_arithmetic"))
    assert set(m["bars"]) == {"expert_gain", "merge_has_tradeoffs", "task_arithmetic_gain"}
    assert all(isinstance(b["pass"], bool) for b in m["bars"].values())
    assert m["timings"]["total_s"] > 0


@pytest.mark.slow
def test_each_expert_beats_the_base_on_its_own_task(quick_zoo):
    # The quick scale is real training but too short for the full build's bars (>= 15 points).
    for task, row in manifest(quick_zoo)["tasks"].items():
        assert row["expert"] >= row["base"] + 0.03, (task, row)


@pytest.mark.slow
def test_checkpoints_load_with_open_clip_and_reproduce_the_manifest(quick_zoo):
    import open_clip

    zoo.register(quick_zoo)
    m = manifest(quick_zoo)
    task = "digits"
    for name, key in (("base", "base"), (task, "expert")):
        model = open_clip.create_model(zoo.ARCHITECTURE, pretrained=str(quick_zoo / f"{name}.safetensors")).eval()
        acc = clip_suite.evaluate(model, dataset=task, split="test", subsample=m["config"]["eval_subsample"])
        assert acc == pytest.approx(m["tasks"][task][key], abs=1e-3)


@pytest.mark.slow
def test_experts_differ_from_the_base_only_in_the_image_encoder(quick_zoo):
    base = load_file(str(quick_zoo / "base.safetensors"))
    clip_suite.check_state_dict(zoo.ARCHITECTURE, base, config_dir=quick_zoo)
    for task in manifest(quick_zoo)["tasks"]:
        expert = load_file(str(quick_zoo / f"{task}.safetensors"))
        assert expert.keys() == base.keys()
        changed = {k for k in base if not torch.equal(base[k], expert[k])}
        assert changed and all(k.startswith(zoo.MERGE_PREFIX) for k in changed)


@pytest.mark.slow
def test_ensure_zoo_reuses_a_matching_zoo(quick_zoo):
    before = (quick_zoo / "base.safetensors").stat().st_mtime_ns
    t = time.perf_counter()
    path = zoo.ensure_zoo(quick_zoo, scale="quick", progress=False)
    assert path == quick_zoo / zoo.MANIFEST and time.perf_counter() - t < 5
    assert (quick_zoo / "base.safetensors").stat().st_mtime_ns == before


def test_same_seed_builds_identical_checkpoints(tmp_path):
    cfg = zoo.zoo_config("quick", tasks=("digits", "font_letters"), pretrain_steps=3, pretrain_batch=32,
                         finetune_steps=2, finetune_batch=16, eval_subsample=40, lambdas=(0.5,))
    a = json.loads(zoo.build_zoo(tmp_path / "a", config=cfg, progress=False).read_text())["files"]
    b = json.loads(zoo.build_zoo(tmp_path / "b", config=cfg, progress=False).read_text())["files"]
    assert a == b and set(a) == {f"{zoo.ARCHITECTURE}.json", "base.safetensors",
                                              "digits.safetensors", "font_letters.safetensors"}
    other = zoo.zoo_config("quick", seed=1, tasks=cfg.tasks)
    assert other.hash() != cfg.hash()
    assert zoo.rare_classes(cfg) == zoo.rare_classes(cfg)


def test_unknown_scale_is_named():
    with pytest.raises(ValueError, match="unknown zoo scale 'huge'"):
        zoo.zoo_config("huge")
