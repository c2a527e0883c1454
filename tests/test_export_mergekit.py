"""Exports rebuilt by real mergekit: the config it is given must reproduce merged.safetensors.

A tiny random Hugging Face Llama (three perturbed experts) goes through `mergekit-yaml` for
task_arithmetic, TIES and DARE; a tiny open_clip model stored as raw state dicts (fp16
safetensors, and an open_clip-style bf16 `.pt` with a `state_dict` entry and `module.` keys) goes
through `mergekit-pytorch`. The gap is measured on the merge's delta, the strict measure:
‖mergekit − merged‖ / ‖merged − base‖ over every floating tensor.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from explorer.demo import zoo
from explorer.experiment.experiment import Experiment
from explorer.export import export
from explorer.merging.checkpoints import content_hash, load_state_dict

BIN = Path(sys.executable).parent
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
CLIP_ARCH = "merge-explorer-export-test"
TASKS = ("a", "b", "c")
MAX_GAP = 1e-5


# --------------------------------------------------------------------------- families and evaluators


def make_llama(state: dict) -> torch.nn.Module:
    """Spec family for the tiny Llama: build from the fixed config, fill with the checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    model.load_state_dict(state)
    return model


def llama_loss(model, seed: int) -> float:
    """Next-token loss on a seeded random sequence (one per task)."""
    ids = torch.randint(0, LLAMA["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=ids).loss)


def clip_alignment(model, seed: int) -> float:
    """Mean cosine between image features of seeded random images and a seeded target direction."""
    gen = torch.Generator().manual_seed(seed)
    size = zoo.builtin.IMAGE_SIZE
    images = torch.rand(4, 3, size, size, generator=gen)
    with torch.inference_mode():
        feats = torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)
    target = torch.nn.functional.normalize(torch.randn(feats.shape[1], generator=gen), dim=0)
    return float((feats @ target).mean())


# --------------------------------------------------------------------------- building checkpoints


def perturbed(state: dict, seed: int, scale: float = 0.5) -> dict:
    """An expert: every floating tensor moved by seeded noise of `scale` times its own std."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, t in state.items():
        if t.is_floating_point():
            std = float(t.float().std()) if t.numel() > 1 else 1.0
            noise = torch.randn(t.shape, generator=gen) * scale * (std or 1.0)
            out[k] = (t.float() + noise).to(t.dtype).contiguous()
        else:
            out[k] = t.clone()
    return out


def write_spec(directory: Path, model: dict, checkpoints: list[str], evaluator: str, metric: str, merge: dict) -> Path:
    tasks = {t: {"checkpoint": ck, "evaluator": evaluator, "metric": metric, "params": {"seed": i}}
             for i, (t, ck) in enumerate(zip(TASKS, checkpoints))}
    spec = {"name": f"export-{merge['method']}", "store": "store.sqlite", "model": model, "tasks": tasks,
            "merge": merge, "bounds": [0.1, 1.0], "budget": 10, "seed": 0}
    path = directory / f"spec-{merge['method']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**LLAMA))
    base.save_pretrained(d / "base")
    state = base.state_dict()
    for i, t in enumerate(TASKS):
        expert = LlamaForCausalLM(LlamaConfig(**LLAMA))
        expert.load_state_dict(perturbed(state, seed=i + 1))
        expert.save_pretrained(d / f"expert-{t}")
    return d


def run_and_export(spec: Path, out: Path):
    """`merge-explorer run` then `export` (no weights preference): the chosen decision."""
    exp = Experiment.from_file(spec)
    result = exp.run(progress=False)
    decision = result.decide()
    export(exp, result, decision, out)
    return exp, result, decision


def start_mergekit(tool: str, out: Path) -> subprocess.Popen:
    """Start the mergekit entry point the export names on its config (runs while the next export is built)."""
    cmd = [str(BIN / tool), str(out / "mergekit.yaml"), str(out / f"by-{tool}"), "--device", "cpu", "--quiet"]
    if tool == "mergekit-yaml":
        cmd += ["--no-copy-tokenizer", "--no-write-model-card"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def mergekit_result(proc: subprocess.Popen, tool: str, out: Path) -> dict[str, torch.Tensor]:
    """Wait for mergekit; the tensors it wrote."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    tensors = {}
    for f in sorted((out / f"by-{tool}").glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def delta_gap(theirs: dict, ours: dict, base: dict) -> float:
    """‖theirs − ours‖ / ‖ours − base‖ over the floating tensors (float64)."""
    num = den = 0.0
    for k, t in ours.items():
        if t.is_floating_point():
            num += float((theirs[k].double() - t.double()).pow(2).sum())
            den += float((t.double() - base[k].double()).pow(2).sum())
    return (num / den) ** 0.5


def check_export(out: Path, decision, tool: str, proc: subprocess.Popen) -> float:
    """The config names the tool and the coefficients; mergekit's result equals merged.safetensors."""
    text = (out / "mergekit.yaml").read_text()
    cfg = yaml.safe_load(text)
    doc = json.loads((out / "coefficients.json").read_text())
    assert f"# run: {tool} mergekit.yaml" in text and "\n# exact: " in text
    assert doc["mergekit"]["exact"] and doc["mergekit"]["entry_point"] == tool
    assert cfg["merge_method"] == "task_arithmetic" and cfg["parameters"] == {"normalize": False}
    assert [m["parameters"]["weight"] for m in cfg["models"]] == pytest.approx(decision.coefficients.tolist())
    for name, rec in doc["mergekit"]["inputs"].items():  # written inputs are what their hash says
        assert content_hash(rec["path"]) == rec["sha256"] and rec["sha256"][:12] in Path(rec["path"]).name
    ours = load_file(str(out / "merged.safetensors"))
    base = load_state_dict(doc["checkpoints"]["base"]["path"])
    theirs = mergekit_result(proc, tool, out)
    assert set(theirs) == set(ours)
    assert all(theirs[k].dtype == ours[k].dtype for k in ours), "mergekit's output dtype must follow the base"
    assert np.all(decision.coefficients >= 0.1 - 1e-9)  # a real merge, not the base
    return delta_gap(theirs, ours, base)


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_mergekit_yaml_rebuilds_hf_llama_merge_for_every_method(llama_dir, tmp_path):
    runs = {}
    # tsv and cart: methods mergekit lacks, rebuilt from the preprocessed experts like TIES and DARE
    for method, density in (("task_arithmetic", None), ("ties", 0.2), ("dare", 0.3), ("tsv", None), ("cart", None)):
        merge = ({"method": method} if density is None else {"method": method, "density": density, "seed": 3})
        spec = write_spec(llama_dir, {"family": "tests.test_export_mergekit:make_llama", "base": "base"},
                          [f"expert-{t}" for t in TASKS], "tests.test_export_mergekit:llama_loss", "loss", merge)
        out = tmp_path / method
        exp, result, decision = run_and_export(spec, out)
        doc = json.loads((out / "coefficients.json").read_text())
        cfg = yaml.safe_load((out / "mergekit.yaml").read_text())
        assert cfg["dtype"] == "float32" and cfg["out_dtype"] == "float32"
        if method == "task_arithmetic":  # the experts themselves: nothing extra written
            assert doc["mergekit"]["inputs"] == {}
            assert [Path(m["model"]).name for m in cfg["models"]] == [f"expert-{t}" for t in TASKS]
        else:  # preprocessed experts as HF folders beside the config
            assert set(doc["mergekit"]["inputs"]) == set(TASKS)
            assert all((Path(m["model"]) / "config.json").is_file() for m in cfg["models"])
            # without the weights (the app's text export) the config cannot be exact, and says so in one line
            light = export(exp, result, decision, tmp_path / f"{method}-light", checkpoint=False)
            lines = [ln for ln in light["mergekit"].read_text().splitlines() if ln.startswith("# not exact: ")]
            assert len(lines) == 1 and not json.loads(light["coefficients"].read_text())["mergekit"]["exact"]
        runs[method] = (out, decision, start_mergekit("mergekit-yaml", out))
    gaps = {m: check_export(out, decision, "mergekit-yaml", proc) for m, (out, decision, proc) in runs.items()}
    print("hf-llama relative L2 gap of the delta:", {m: f"{g:.2e}" for m, g in gaps.items()})
    assert all(g <= MAX_GAP for g in gaps.values()), gaps


@pytest.mark.slow
def test_mergekit_pytorch_rebuilds_open_clip_merge(tmp_path):
    """fp16 safetensors through task arithmetic (read as is); a bf16 open_clip .pt through TIES (rewritten)."""
    cfg = zoo.ZooConfig(embed_dim=16, vision_width=32, vision_layers=1, vision_head_width=16, patch_size=7,
                        text_width=16, text_layers=1, text_heads=2, context_length=8)
    (tmp_path / f"{CLIP_ARCH}.json").write_text(json.dumps(zoo.model_config(cfg)))
    import open_clip

    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    state = open_clip.create_model(CLIP_ARCH).state_dict()
    runs = {}
    for layout, method, dtype in (("safetensors", "task_arithmetic", torch.float16), ("pt", "ties", torch.bfloat16)):
        d = tmp_path / layout
        d.mkdir()
        states = [state] + [perturbed(state, seed=i + 1) for i in range(len(TASKS))]
        states = [{k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in s.items()} for s in states]
        for name, s in zip(["base"] + [f"expert-{t}" for t in TASKS], states):
            if layout == "pt":  # as open_clip's training script saves it (DDP keys)
                torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in s.items()}}, d / f"{name}.pt")
            else:
                save_file(s, str(d / f"{name}.safetensors"))
        merge = {"method": method, "density": 0.2} if method == "ties" else {"method": method}
        spec = write_spec(d, {"family": "open_clip", "architecture": CLIP_ARCH, "config_dir": "..",
                              "base": f"base.{layout}"},
                          [f"expert-{t}.{layout}" for t in TASKS], "tests.test_export_mergekit:clip_alignment",
                          "alignment", merge)
        out = d / "export"
        _, _, decision = run_and_export(spec, out)
        mk = yaml.safe_load((out / "mergekit.yaml").read_text())
        assert mk["dtype"] == "float32" and mk["out_dtype"] == str(dtype).removeprefix("torch.")  # output follows the base
        inputs = json.loads((out / "coefficients.json").read_text())["mergekit"]["inputs"]
        if layout == "pt":  # mergekit cannot read the nested, prefixed .pt: base and experts are written
            assert set(inputs) == {"base", *TASKS} and mk["base_model"] == inputs["base"]["path"]
            assert all(inputs[t]["dtype"] == "bfloat16" for t in TASKS)  # TIES's θ₀ + τᵢ′ cast exactly
        else:
            assert inputs == {} and Path(mk["base_model"]) == d / "base.safetensors"
        runs[f"{layout}-{dtype}-{method}"] = (out, decision, start_mergekit("mergekit-pytorch", out))
    gaps = {k: check_export(out, decision, "mergekit-pytorch", proc) for k, (out, decision, proc) in runs.items()}
    print("open_clip relative L2 gap of the delta:", {k: f"{g:.2e}" for k, g in gaps.items()})
    assert all(g <= MAX_GAP for g in gaps.values()), gaps


def input_dtypes(folder: Path) -> set[str]:
    """The safetensors dtype codes of a written input folder's tensors (from the headers)."""
    from explorer.export import _safetensors_dtypes

    return {c for f in folder.glob("*.safetensors") for c in _safetensors_dtypes(f).values()}


@pytest.mark.slow
def test_mergekit_yaml_rebuilds_streamed_bf16_hf_causal_lm_ties_and_dare(tmp_path):
    """family hf_causal_lm (bf16, sharded, streaming merger): TIES's and DARE's preprocessed experts are
    recomputed tensor by tensor and written as HF folders; TIES's in bf16 (θ₀ + τᵢ′ is θᵢ or θ₀ entry by
    entry, so the cast is exact), DARE's in float32 (rescaled survivors are not bf16 numbers)."""
    from explorer.demo.llm_zoo import char_tokenizer, save_folder, tiny_llama

    tok = char_tokenizer()
    base = tiny_llama(len(tok), hidden=32, layers=2, heads=2, intermediate=64, seed=0)
    save_folder(base.to(torch.bfloat16), tok, tmp_path / "base", max_shard_size="40KB")
    state = base.state_dict()
    for i, t in enumerate(TASKS):
        expert = tiny_llama(len(tok), hidden=32, layers=2, heads=2, intermediate=64, seed=0)
        expert.load_state_dict(perturbed(state, seed=i + 1))
        save_folder(expert.to(torch.bfloat16), tok, tmp_path / f"expert-{t}", max_shard_size="40KB")
    assert len(list((tmp_path / "base").glob("*.safetensors"))) > 1  # sharded, as large models are
    runs = {}
    for method, density, written in (("ties", 0.2, "BF16"), ("dare", 0.3, "F32")):
        spec = write_spec(tmp_path, {"family": "hf_causal_lm", "base": "base"}, [f"expert-{t}" for t in TASKS],
                          "tests.test_export_mergekit:llama_loss", "loss",
                          {"method": method, "density": density, "seed": 1})
        out = tmp_path / f"export-{method}"
        exp, result, decision = run_and_export(spec, out)
        cfg = yaml.safe_load((out / "mergekit.yaml").read_text())
        doc = json.loads((out / "coefficients.json").read_text())
        assert cfg["out_dtype"] == "bfloat16" and cfg["merge_method"] == "task_arithmetic"
        inputs = doc["mergekit"]["inputs"]
        assert set(inputs) == set(TASKS) and [m["model"] for m in cfg["models"]] == [inputs[t]["path"] for t in TASKS]
        for t in TASKS:  # HF folders with the base's config and tokenizer, under mergekit-inputs/<task>-<sha12>
            folder = Path(inputs[t]["path"])
            assert folder.parent == (out / "mergekit-inputs").resolve() and folder.name.startswith(f"{t}-")
            assert (folder / "config.json").read_bytes() == (tmp_path / "base" / "config.json").read_bytes()
            assert (folder / "tokenizer.json").is_file()
            assert input_dtypes(folder) == {written}, (method, input_dtypes(folder))
        assert inputs["a"]["dtype"] == {"BF16": "bfloat16", "F32": "float32"}[written]
        gap_note = "written in bfloat16" if written == "BF16" else "written in float32 because bfloat16 would not be"
        assert gap_note in doc["mergekit"]["how"], doc["mergekit"]["how"]
        if method == "dare":  # the measured reason for float32: bf16 would miss the bar by orders of magnitude
            assert min(r["cast_gap"] for r in inputs.values()) > 1e-3
        else:
            assert max(r["cast_gap"] for r in inputs.values()) <= 1e-5
        # without the weights (the app's text export) the config cannot be exact, and says so in one line
        light = export(exp, result, decision, tmp_path / f"{method}-light", checkpoint=False)
        lines = [ln for ln in light["mergekit"].read_text().splitlines() if ln.startswith("# not exact: ")]
        assert len(lines) == 1 and not (tmp_path / f"{method}-light" / "mergekit-inputs").exists()
        runs[method] = (out, decision, start_mergekit("mergekit-yaml", out))
    gaps = {}
    for method, (out, decision, proc) in runs.items():
        ours = {}
        for f in (out / "merged").glob("*.safetensors"):  # this family exports a model folder
            ours.update(load_file(str(f)))
        save_file(ours, str(out / "merged.safetensors"))  # one file, for the common check
        gaps[method] = check_export(out, decision, "mergekit-yaml", proc)
    print("hf_causal_lm bf16 relative L2 gap of the delta:", {m: f"{g:.2e}" for m, g in gaps.items()},
          "cast gaps:", {m: max(r["cast_gap"] for r in json.loads((o / "coefficients.json").read_text())
                                 ["mergekit"]["inputs"].values()) for m, (o, _, _) in runs.items()})
    assert all(g <= MAX_GAP for g in gaps.values()), gaps
