"""End to end through the CLI on a real (quick) demo zoo: zoo -> spec -> run -> front -> export -> reload.

The exported merged.safetensors is loaded back with open_clip, exactly as a user would, and its
measured accuracy on every task is checked against the prediction the export recorded.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from explorer.demo import zoo
from explorer.suites import clip as clip_suite

ROOT = Path(__file__).resolve().parent.parent
SUBSAMPLE = 400


@pytest.fixture(scope="module")
def demo_spec(quick_zoo, tmp_path_factory):
    """The shipped demo spec, pointed at the quick zoo and a smaller validation subsample."""
    spec = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    spec["model"].update(config_dir=str(quick_zoo), base=str(quick_zoo / "base.safetensors"))
    for name, task in spec["tasks"].items():
        task["checkpoint"] = str(quick_zoo / Path(task["checkpoint"]).name)
        task["params"]["subsample"] = SUBSAMPLE
    out = tmp_path_factory.mktemp("demo-run")
    spec["store"] = str(out / "store.sqlite")
    path = out / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "explorer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_demo_pipeline_end_to_end(demo_spec, quick_zoo, tmp_path):
    run = cli("run", demo_spec, "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "fashion" in run.stdout and "R² (LOO-CV)" in run.stdout

    out = tmp_path / "export"
    export = cli("export", demo_spec, "--weights", "fashion=1,digits=1,rotated_digits=1,letters=1", "--out", out)
    assert export.returncode == 0, export.stderr
    doc = json.loads((out / "coefficients.json").read_text())

    from explorer.experiment.experiment import Experiment

    result = Experiment.from_file(demo_spec).result()
    import open_clip

    zoo.register(quick_zoo)
    merged = open_clip.create_model(zoo.ARCHITECTURE, pretrained=str(out / "merged.safetensors")).eval()
    spec = yaml.safe_load(demo_spec.read_text())
    for i, (name, task) in enumerate(spec["tasks"].items()):
        measured = clip_suite.evaluate(merged, **task["params"])
        predicted = doc["predicted"][name]
        # the surrogate's own cross-validated error on this task, in accuracy units
        rmse_cv = np.sqrt(max(1.0 - result.surrogates[name].r2_cv_, 0.0) * np.var(result.observed[:, i]))
        assert abs(measured - predicted) <= 3 * rmse_cv + 0.02, (name, measured, predicted, rmse_cv)


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_named(demo_spec, tmp_path):
    spec = yaml.safe_load(demo_spec.read_text())
    spec["model"]["architecture"] = "ViT-B-32"  # the zoo's checkpoints are merge-explorer-tiny
    spec["store"] = str(tmp_path / "store.sqlite")
    path = tmp_path / "wrong-arch.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = cli("run", path, "--no-progress")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "base.safetensors" in line and "architecture 'ViT-B-32'" in line, line
