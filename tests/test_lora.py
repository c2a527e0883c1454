"""LoRA experts (`model.experts_format: peft`): merges from the factors equal the densified merge,
every linear method equals the same method on densified full experts, the exported merged adapter
loads with the real peft and computes the merged model, bad adapters are named in one line."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.cli import main
from explorer.experiment.experiment import Experiment
from explorer.merging.hf_folder import copy_side_files
from tests import llm_models
from tests.llm_models import one_thread, weights  # noqa: F401 (one_thread: autouse fixture)

PROMPTS = {"upper": [{"prompt": f"up {w}=", "answer": w.upper()} for w in ("ab", "cd", "ef")],
           "reverse": [{"prompt": f"rev {w}=", "answer": w[::-1]} for w in ("ab", "cd", "ef")]}
#: Two adapters unlike each other: other modules, rank 16 both (≥ TSV-M's k = 32 // 2, so its top
#: singular triplets are the adapter's own), plain and rsLoRA scaling, float32 and bf16 factors.
ADAPTERS = {
    "upper": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj", "up_proj", "lm_head"],
              "use_rslora": False, "save_dtype": torch.float32},
    "reverse": {"r": 16, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "o_proj", "down_proj"],
                "use_rslora": True, "save_dtype": torch.bfloat16},
}
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}


def train_adapter(base_dir: Path, out: Path, skill: str, r: int, lora_alpha: int, target_modules, use_rslora: bool,
                  save_dtype: torch.dtype, seed: int) -> Path:
    """A real peft adapter: LoraConfig + get_peft_model over the base, a few training steps, save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                                                  use_rslora=use_rslora, lora_dropout=0.0))
    llm_models.train(peft_model, tok, llm_models.SKILL_TEXT[skill], steps=8, lr=1e-2, seed=seed)
    peft_model.to(save_dtype).save_pretrained(str(out))
    return out


def dense_reference(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """τ = s·B·A per base key in float64, read straight from the peft files (not through merge-explorer)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    raw = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out = {}
    for name, a in raw.items():
        if not name.endswith(".lora_A.weight"):
            continue
        b = raw[name.replace("lora_A", "lora_B")]
        r = a.shape[0]
        s = config["lora_alpha"] / (math.sqrt(r) if config["use_rslora"] else r)
        out[name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")] = s * (b.double() @ a.double())
    return out


def write_dense_expert(base_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """A full-format expert folder θ₀ + s·B·A (computed in float64, rounded to the base's dtype)."""
    base = weights(base_dir)
    tau = dense_reference(base_dir, adapter_dir)
    out.mkdir(parents=True)
    copy_side_files(base_dir, out)
    save_file({k: ((v.double() + tau[k]).to(v.dtype) if k in tau else v).contiguous() for k, v in base.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    """Per base dtype: a base folder (sharded) and two adapters trained over it."""
    root = tmp_path_factory.mktemp("lora")
    out = {}
    for name, dtype in DTYPES.items():
        base = llm_models.cached_build(tmp_path_factory, name=f"lora-{name}", skills=(), dtype=dtype)["base"]
        adapters = {t: train_adapter(base, root / name / t, t, seed=i + 1, **ADAPTERS[t]) for i, t in enumerate(ADAPTERS)}
        out[name] = (base, adapters)
    return out


def make_spec(tmp_path: Path, base: Path, experts: dict[str, Path], fmt: str = "peft", merge: str = "") -> Path:
    data = {t: llm_models.write_jsonl(tmp_path / f"{t}.jsonl", PROMPTS[t]).name for t in PROMPTS}
    extra = "  experts_format: peft\n" if fmt == "peft" else ""
    spec = tmp_path / f"spec-{fmt}.yaml"
    spec.write_text(llm_models.spec_text(str(base), {t: str(p) for t, p in experts.items()}, data, extra)
                    + (f"merge: {merge}\n" if merge else ""))
    return spec


def merged_state(spec: Path, c) -> dict[str, torch.Tensor]:
    exp = Experiment.from_file(spec)
    exp.engine.merger.apply(np.asarray(c, dtype=float))
    return {k: v.detach().clone() for k, v in exp.engine.model.state_dict().items()}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_factor_merge_equals_the_float64_densified_merge(zoos, tmp_path, dtype):
    base_dir, adapters = zoos[dtype]
    c = [0.8, -0.35]
    got = merged_state(make_spec(tmp_path, base_dir, adapters), c)
    base = weights(base_dir)
    taus = [dense_reference(base_dir, adapters[t]) for t in ADAPTERS]
    touched = 0
    for k, b in base.items():
        delta = sum(ci * tau[k] for ci, tau in zip(c, taus) if k in tau)
        if isinstance(delta, int):  # no adapter targets it: θ₀ bit for bit
            assert torch.equal(got[k], b), k
            continue
        touched += 1
        want = b.double() + delta
        err = (got[k].double() - want).abs()
        assert got[k].dtype == b.dtype
        if dtype == "bf16":  # within one bf16 step of the exact value
            assert torch.all(err <= want.abs().clamp_min(2 ** -20) * 2 ** -7), k
        else:
            assert float(err.max()) <= 1e-6, k
    assert touched == 13  # q, k, v, o, up, down in each of 2 layers (q in both adapters), and lm_head


@pytest.mark.parametrize("merge", ["{method: task_arithmetic}", "{method: ties, density: 0.3}",
                                   "{method: dare, density: 0.5, seed: 3}", "{method: tsv}",
                                   "{method: cart, rank_ratio: 0.25}", "{method: consensus, min_tasks: 1}",
                                   "{method: lines}"])
def test_every_linear_method_on_lora_experts_equals_it_on_densified_experts(zoos, tmp_path, merge):
    base_dir, adapters = zoos["f64"]  # float64: densifying moves no entry across a top-k or mask threshold
    dense = {t: write_dense_expert(base_dir, p, tmp_path / f"dense-{t}") for t, p in adapters.items()}
    c = [0.9, 0.6]
    lora = merged_state(make_spec(tmp_path, base_dir, adapters, "peft", merge), c)
    full = merged_state(make_spec(tmp_path, base_dir, dense, "full", merge), c)
    base = weights(base_dir)
    assert lora.keys() == full.keys()
    moved = 0
    for k in lora:
        # the full path stores τᵢ′ in float32 (preprocessed experts), the LoRA path keeps float64
        assert torch.allclose(lora[k], full[k], rtol=0, atol=1e-6), (k, float((lora[k] - full[k]).abs().max()))
        moved += int(k in base and not torch.equal(lora[k], base[k]))
    assert moved == (7 if "lines" in merge else 13)  # every target moved (LiNeS: α = 0 keeps the first block at θ₀)


def test_merged_adapter_loads_in_peft_and_computes_the_merged_model(zoos, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from explorer.export import write_merged

    base_dir, adapters = zoos["f32"]
    exp = Experiment.from_file(make_spec(tmp_path, base_dir, adapters))
    c = np.array([0.7, 0.45])
    paths = write_merged(exp, c, tmp_path / "export")
    assert set(paths) == {"merged", "merged_adapter"}
    config = json.loads((paths["merged_adapter"] / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 32  # rank Σ rᵢ where both adapters meet (q_proj), zero-padded elsewhere
    ids = torch.tensor([[1, 20, 31, 7, 44, 12, 5, 60, 3]])
    merged = AutoModelForCausalLM.from_pretrained(str(paths["merged"]), local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        want = merged(ids).logits
        exp.engine.merger.apply(c)
        assert torch.equal(exp.engine.model(ids).logits, want)  # the exported folder is what was evaluated
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True, dtype=torch.float32)
        got = PeftModel.from_pretrained(base, str(paths["merged_adapter"])).eval()(ids).logits
    assert torch.allclose(got, want, rtol=0, atol=2e-5), float((got - want).abs().max())
    # TIES is not a sum of the factors: no single adapter computes it, and none is written
    (tmp_path / "ties").mkdir()
    ties = Experiment.from_file(make_spec(tmp_path / "ties", base_dir, adapters, merge="{method: ties}"))
    assert set(write_merged(ties, c, tmp_path / "ties" / "export")) == {"merged"}


def _run_error(spec: Path, capsys) -> str:
    assert main(["run", str(spec), "--no-progress"]) == 2
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("merge memory:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _break_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _rename_factor(folder: Path, old: str, new: str) -> None:
    path = folder / "adapter_model.safetensors"
    raw = load_file(str(path))
    save_file({k.replace(old, new): v for k, v in raw.items()}, str(path))


BAD = {
    "no config": (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
    "no weights": (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
    "DoRA": (lambda f: _break_config(f, use_dora=True), "use_dora = true is not supported"),
    "trained bias": (lambda f: _break_config(f, bias="lora_only"), 'bias = "lora_only" is not supported'),
    "rank": (lambda f: _break_config(f, r=4), "has rank 16; adapter_config.json says r = 4"),
    "target absent": (lambda f: _rename_factor(f, "q_proj", "qq_proj"), "which the base"),
    "shape": (lambda f: _rename_factor(f, "layers.0.self_attn.k_proj", "layers.0.mlp.down_proj"), "has shape"),
    "half a pair": (lambda f: _rename_factor(f, "layers.1.self_attn.o_proj.lora_B", "layers.1.self_attn.o_proj.lora_C"),
                    "not a LoRA factor"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_adapter_is_named_in_one_line_and_nothing_is_stored(zoos, tmp_path, capsys, case):
    base_dir, adapters = zoos["bf16"]
    copies = {t: shutil.copytree(p, tmp_path / t) for t, p in adapters.items()}
    breaks, expected = BAD[case]
    breaks(copies["reverse"])
    spec = make_spec(tmp_path, base_dir, copies)
    line = _run_error(spec, capsys)
    assert expected in line, line
    assert "reverse" in line  # the folder at fault is named
    assert not (tmp_path / "store.sqlite").exists() or Experiment.from_file(spec).store.count(
        Experiment.from_file(spec).key) == 0


def test_peft_format_needs_the_hf_family(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {family: open_clip, base: b.pt, experts_format: peft}\n"
                    "tasks: {a: {checkpoint: a.pt, evaluator: 'x:y'}, b: {checkpoint: b.pt, evaluator: 'x:y'}}\n")
    line = _run_error(spec, capsys)
    assert "experts_format 'peft'" in line and "hf_causal_lm" in line


def test_iso_c_is_refused_on_lora_experts(tmp_path, capsys):
    """Iso-C flattens all min(m, n) singular values of Σcᵢτᵢ; a LoRA update has only Σrᵢ of them non-zero,
    so the merge would add arbitrary null-space directions: refused in one line, nothing run."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("model: {family: hf_causal_lm, base: base, experts_format: peft}\nmerge: {method: iso_c}\n"
                    "tasks: {a: {checkpoint: a, evaluator: 'x:y'}, b: {checkpoint: b, evaluator: 'x:y'}}\n")
    line = _run_error(spec, capsys)
    assert "iso_c" in line and "peft" in line


def test_lora_experiments_are_keyed_apart_from_full_experts(zoos, tmp_path):
    base_dir, adapters = zoos["f32"]
    dense = {t: write_dense_expert(base_dir, p, tmp_path / f"dense-{t}") for t, p in adapters.items()}
    lora = Experiment.from_file(make_spec(tmp_path, base_dir, adapters))
    full = Experiment.from_file(make_spec(tmp_path, base_dir, dense, "full"))
    assert lora.key != full.key and lora.model_key != full.model_key
    # the scaling lives in adapter_config.json: changing lora_alpha is another experiment
    copies = {t: shutil.copytree(p, tmp_path / "alpha" / t) for t, p in adapters.items()}
    _break_config(copies["upper"], lora_alpha=64)
    assert Experiment.from_file(make_spec(tmp_path, base_dir, copies)).key != lora.key


def test_lora_demo_explores_a_front(tmp_path_factory, tmp_path, capsys):
    """The demo's LoRA builder (peft training, seeded) over a tiny base, then a real `run` with a small budget."""
    from dataclasses import asdict

    from explorer.demo import llm_lora_zoo, llm_zoo

    base = llm_models.cached_build(tmp_path_factory, name="lora-demo", skills=())["base"]
    zoo = tmp_path / "zoo"
    shutil.copytree(base, zoo / "base")
    skills = ("upper", "reverse")
    for skill in skills:
        for split, records in llm_zoo.held_out(skill, 12, seed=0).items():
            llm_models.write_jsonl(zoo / f"{skill}.{split}.jsonl", records)
    config = llm_zoo.llm_zoo_config("quick", skills=skills, skill_shares=(0.01, 0.01), lambdas=(0.5, 1.0))
    (zoo / "manifest.json").write_text(json.dumps({"config": asdict(config)}))
    small = llm_lora_zoo.LoraZooConfig(rank=4, alpha=8, steps=25, batch=16)
    manifest = json.loads(llm_lora_zoo.ensure_lora_experts(zoo, small, progress=False).read_text())
    assert manifest["skills"] == list(skills) and manifest["timings"]["total_s"] > 0
    for skill in skills:  # peft's own files
        assert {p.name for p in (zoo / "lora" / skill).iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    # current: a second call trains nothing
    stamp = (zoo / "lora" / "upper" / "adapter_model.safetensors").stat().st_mtime_ns
    llm_lora_zoo.ensure_lora_experts(zoo, small, progress=False)
    assert (zoo / "lora" / "upper" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    data = {s: f"zoo/{s}.validation.jsonl" for s in skills}
    spec = tmp_path / "spec.yaml"
    spec.write_text(llm_models.spec_text("zoo/base", {s: f"zoo/lora/{s}" for s in skills}, data,
                                         "  experts_format: peft\n").replace("budget: 8", "budget: 6"))
    assert main(["run", str(spec), "--no-progress"]) == 0
    assert "LoRA adapters" in capsys.readouterr().err
    exp = Experiment.from_file(spec)
    assert exp.store.count(exp.key) == 6 * len(skills)
    result = exp.result()
    assert len(result.front_coefficients) > 0 and np.isfinite(result.front_predicted).all()
    # export: the merged model, the merged adapter, and a mergekit config over densified inputs (exact)
    assert main(["export", str(spec), "--weights", "upper=1,reverse=1", "--out", str(tmp_path / "export")]) == 0
    doc = json.loads((tmp_path / "export" / "coefficients.json").read_text())
    assert doc["mergekit"]["exact"] and (tmp_path / "export" / "mergekit.yaml").is_file()
    c = np.array([doc["coefficients"][s] for s in skills])
    merged = weights(tmp_path / "export" / "merged")
    ref = {k: v.double() for k, v in weights(zoo / "base").items()}
    for s_, ci in zip(skills, c):
        for k, tau in dense_reference(zoo / "base", zoo / "lora" / s_).items():
            ref[k] = ref[k] + ci * tau
    for k, v in merged.items():
        assert torch.all((v.double() - ref[k]).abs() <= ref[k].abs().clamp_min(2 ** -20) * 2 ** -7), k
    assert (tmp_path / "export" / "merged-adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name,params", [("tsv", {}), ("cart", {"rank_ratio": 0.08}), ("cart", {"rank_ratio": 0.5})])
def test_tsv_and_cart_from_the_cores_equal_them_on_the_dense_layers(name, params):
    """Ranks below TSV-M's k, one adapter that leaves the layer alone: the pieces from the factors' cores
    (two QRs, no dense SVD) equal the method on the densified float64 layers, within 1e-6."""
    from explorer.merging.lora import LoraFactors, layer_cores
    from explorer.merging.methods import get_method

    gen = torch.Generator().manual_seed(0)
    m, n = 96, 40  # TSV-M: k = 40 // 4 = 10 > ranks 4 and 6; CART 0.08: k = 3 < the deviations' ranks
    fs = [LoraFactors(torch.randn(r, n, generator=gen), torch.randn(m, r, generator=gen) * 0.1, s)
          for r, s in ((16, 2.0), (4, 0.5), (6, 1.0 / math.sqrt(6)))] + [None]
    dense = torch.stack([f.delta(torch.float64) if f else torch.zeros(m, n, dtype=torch.float64) for f in fs])
    q, cores, p = layer_cores(fs, (m, n))
    assert cores.shape == (4, 26, 26)
    assert torch.allclose(q.T @ q, torch.eye(26, dtype=torch.float64)) and torch.allclose(p.T @ p, torch.eye(26, dtype=torch.float64))
    for c, d in zip(cores, dense):
        assert torch.allclose(q @ c @ p.T, d, atol=1e-12)
    method, full = get_method(name), {"method": name, **params}
    got = method.preprocess_core(cores, (m, n), "w", full)
    want = method.preprocess(dense, "w", full).double()
    scale = float(want.abs().max())
    for g, w in zip(got, want):
        assert float((q @ g @ p.T - w).abs().max()) <= 1e-6 * scale


def test_tsv_on_adapters_of_rank_below_k_merges_from_the_cores_like_dense_tsv(zoos, tmp_path, capfd):
    """Both adapters on the same modules with rank 4 < TSV-M's k = 16: the engine merges from the layers'
    cores (no dense SVD, nothing preprocessed to disk) what TSV-M (kᵢ = min(k, rank τᵢ)) merges on
    densified full experts."""
    base_dir, _ = zoos["f64"]
    same = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"], "use_rslora": False,
            "save_dtype": torch.float32}
    adapters = {t: train_adapter(base_dir, tmp_path / f"ad-{t}", t, seed=i + 5, **same) for i, t in enumerate(PROMPTS)}
    dense = {t: write_dense_expert(base_dir, p, tmp_path / f"dense-{t}") for t, p in adapters.items()}
    c = [0.8, 1.1]
    lora = merged_state(make_spec(tmp_path, base_dir, adapters, "peft", "{method: tsv}"), c)
    err = capfd.readouterr().err
    assert "TSV-M on each layer's cores" in err and "preprocessing" not in err
    full = merged_state(make_spec(tmp_path, base_dir, dense, "full", "{method: tsv}"), c)
    for k in lora:
        assert torch.allclose(lora[k], full[k], rtol=0, atol=1e-6), k


def test_task_vectors_are_produced_whole_or_by_ranges_alike(zoos, tmp_path):
    """Consensus builds its masks from chunks of every τᵢ: a range of a full expert's τ (read from its file)
    is exactly that part of the whole τ; a LoRA τ's range (from the rows of B that hold it) is s·B·A's
    elements within float32 rounding, the same every time it is asked for."""
    from explorer.merging.lora import DensifiedAdapter, LoraAdapter
    from explorer.merging.preprocessed import ChunkReader, task_vector_into
    from explorer.merging.safetensors_file import SafetensorsCheckpoint

    base_dir, adapters = zoos["bf16"]
    base = SafetensorsCheckpoint(base_dir)
    experts = [DensifiedAdapter(base, LoraAdapter(adapters["upper"])),
               SafetensorsCheckpoint(write_dense_expert(base_dir, adapters["reverse"], tmp_path / "dense"))]
    reader = ChunkReader(chunk=37)  # chunks that end mid-row
    for expert in experts:
        lora = isinstance(expert, DensifiedAdapter)
        for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
            shape = tuple(base.entries[key].shape)
            whole = torch.empty(shape)
            task_vector_into(expert, base, key, whole, reader)
            flat = whole.view(-1)
            if lora and key in expert.adapter.factors:
                f = expert.adapter.factors[key]
                assert torch.allclose(whole.double(), f.scale * (f.b.double() @ f.a.double()), rtol=1e-5, atol=1e-8)
            for start, width in ((0, 5), (3, shape[1] + 7), (shape[1] - 1, 2), (flat.numel() - 9, 9)):
                part, again = torch.full((width,), float("nan")), torch.full((width,), float("nan"))
                task_vector_into(expert, base, key, part, reader, start)
                task_vector_into(expert, base, key, again, reader, start)
                assert torch.equal(part, again)
                want = flat[start:start + width]
                assert torch.equal(part, want) if not lora else torch.allclose(part, want, rtol=1e-6, atol=1e-9), \
                    (expert.name, key, start)


def test_lora_tsv_export_writes_what_was_evaluated(zoos, tmp_path):
    """TSV-M from the layers' cores: the exported merged folder is the model that was evaluated, and the
    densified experts θ₀ + τᵢ′ handed to mergekit sum (c-weighted) to the same merge."""
    from transformers import AutoModelForCausalLM

    from explorer.export import write_merged

    base_dir, adapters = zoos["f32"]
    exp = Experiment.from_file(make_spec(tmp_path, base_dir, adapters, merge="{method: tsv}"))
    c = np.array([0.7, 0.45])
    paths = write_merged(exp, c, tmp_path / "export")
    assert set(paths) == {"merged"}  # TSV-M is not a sum of the factors: no merged adapter
    written = AutoModelForCausalLM.from_pretrained(str(paths["merged"]), local_files_only=True, dtype=torch.float32)
    exp.engine.merger.apply(c)
    evaluated = exp.engine.model.state_dict()
    for k, v in written.state_dict().items():
        assert torch.equal(v, evaluated[k]), k
    moved = 0
    for key, b, experts in exp.engine.merger.iter_preprocessed():
        if b is None:
            continue
        want = b.double() + sum(float(ci) * (x.double() - b.double()) for ci, x in zip(c, experts))
        assert torch.allclose(evaluated[key].double(), want, rtol=0, atol=1e-6), key
        moved += int(not torch.equal(experts[0], b))
    assert moved == 7  # the upper adapter's targets (q, v, up in 2 layers, lm_head)
