"""Language-model evaluators on tiny real models: the JSONL suite and the lm-eval-harness adapter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import llm_models
from tests.llm_models import one_thread  # noqa: F401 (autouse fixture)

MC = [
    {"prompt": "up ab=", "choices": ["AB", "ab", "BA"], "answer": 0},
    {"prompt": "rev cd=", "choices": ["cd", "dc", "DC"], "answer": "dc"},
    {"prompt": "up ef=", "choices": ["ef", "EF", "FE"], "answer": 1},
    {"prompt": "rev gh=", "choices": ["hg", "gh", "GH"], "answer": 0},
    {"prompt": "up ij=", "choices": ["IJ", "ji", "ij"], "answer": 0},
]
EM = [{"prompt": f"up {w}=", "answer": w.upper()} for w in ("ab", "cd", "ef", "gh", "ij", "kl", "mn")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return llm_models.cached_build(tmp_path_factory)


@pytest.fixture(scope="module")
def expert(folders):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folders["upper"]), local_files_only=True, dtype="auto").eval()


def greedy_one_by_one(model, tok, prompt: str, max_new: int) -> str:
    """Reference decoding: one prompt, full forward pass per token, argmax, no cache, no padding."""
    ids = tok(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def test_exact_match_is_batched_greedy_decoding(expert, tmp_path):
    from explorer.lm_suite import evaluate, tokenizer_for

    data = llm_models.write_jsonl(tmp_path / "em.jsonl", EM)
    tok = tokenizer_for(expert)
    expected = np.mean([greedy_one_by_one(expert, tok, r["prompt"], len(r["answer"]) + 2).split("\n")[0].strip()
                        == r["answer"] for r in EM])
    assert expected > 0  # the expert learnt some of it: the comparison is not 0 == 0
    assert evaluate(expert, data=str(data), batch_size=3) == pytest.approx(expected)
    assert evaluate(expert, data=str(data), batch_size=7) == pytest.approx(expected)


def test_multiple_choice_and_loss_against_direct_log_likelihoods(expert, tmp_path):
    from explorer.lm_suite import evaluate, tokenizer_for

    tok = tokenizer_for(expert)
    data = llm_models.write_jsonl(tmp_path / "mc.jsonl", MC)

    def loglik(prompt: str, cont: str) -> float:
        ctx, full = tok(prompt)["input_ids"], tok(prompt + cont)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(expert(input_ids=torch.tensor([full])).logits[0].float(), -1)
        return sum(float(logp[p - 1, full[p]]) for p in range(len(ctx), len(full)))

    answers = [r["answer"] if isinstance(r["answer"], int) else r["choices"].index(r["answer"]) for r in MC]
    picked = [int(np.argmax([loglik(r["prompt"], c) for c in r["choices"]])) for r in MC]
    assert evaluate(expert, data=str(data), metric="multiple_choice", batch_size=4) == pytest.approx(
        np.mean([p == a for p, a in zip(picked, answers)]))
    em = llm_models.write_jsonl(tmp_path / "em.jsonl", EM)
    nll = [-loglik(r["prompt"], r["answer"]) for r in EM]
    n = [len(r["answer"]) for r in EM]  # one token per character
    assert evaluate(expert, data=str(em), metric="loss", batch_size=4) == pytest.approx(sum(nll) / sum(n), rel=1e-4)


def test_data_is_tokenised_once_and_identity_follows_the_file(expert, tmp_path):
    from explorer.suites import lm

    data = llm_models.write_jsonl(tmp_path / "em.jsonl", EM)
    before = len(lm._DATA)
    lm.evaluate(expert, data=str(data), batch_size=4)
    lm.evaluate(expert, data=str(data), batch_size=4)
    assert len(lm._DATA) == before + 1
    first = lm.fingerprint(data="em.jsonl", spec_dir=str(tmp_path))
    llm_models.write_jsonl(data, EM[:-1])
    assert lm.fingerprint(data="em.jsonl", spec_dir=str(tmp_path)) != first
    (tmp_path / "bad.jsonl").write_text('{"prompt": "up ab=", "answer": "AB"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        lm.evaluate(expert, data=str(tmp_path / "bad.jsonl"))


TASK_YAML = """task: tiny_skills_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
metadata:
  version: {version}
"""


def test_lm_eval_task_runs_on_the_merged_model_in_memory(folders, tmp_path, monkeypatch):
    """An lm-eval task (local JSON data) and the JSONL suite measure the same merged model alike."""
    pytest.importorskip("lm_eval")
    from explorer.experiment.experiment import Experiment

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [dict(r, answer=r["answer"] if isinstance(r["answer"], int) else r["choices"].index(r["answer"])) for r in MC]
    data = llm_models.write_jsonl(tmp_path / "mc.jsonl", rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny.yaml").write_text(TASK_YAML.format(data=data, version="1.0"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""name: lm-eval
store: store.sqlite
model: {{family: hf_causal_lm, base: {folders['base']}}}
tasks:
  harness:
    checkpoint: {folders['upper']}
    evaluator: explorer.suites.lm_eval_harness:evaluate
    params: {{task: tiny_skills_mc, include_path: tasks, metric: acc, batch_size: 4, lm_options: {{softmax_dtype: float32}}}}
  jsonl:
    checkpoint: {folders['reverse']}
    evaluator: explorer.lm_suite:evaluate
    params: {{data: mc.jsonl, metric: multiple_choice, batch_size: 4}}
device: cpu
""")
    exp = Experiment.from_file(spec)
    for c in ([0.0, 0.0], [0.8, 0.3], [1.0, 0.0]):
        harness, jsonl = exp.evaluate(np.array(c))
        assert harness == pytest.approx(jsonl), c
    # a subset through lm-eval's own sample selection: per-document values, the same as in a full run
    from explorer.suites import lm_eval_harness as harness_suite

    params = dict(task="tiny_skills_mc", include_path="tasks", metric="acc", batch_size=4,
                  lm_options={"softmax_dtype": "float32"}, spec_dir=tmp_path)
    model = exp.engine.model  # merged at the last point
    n = harness_suite.n_examples(model, **params)
    assert n == len(rows) and exp.engine.takes_indices("harness")
    every = harness_suite.evaluate(model, indices=np.arange(n), **params)
    assert every.shape == (n,) and every.mean() == pytest.approx(harness_suite.evaluate(model, **params))
    np.testing.assert_array_equal(harness_suite.evaluate(model, indices=[n - 1, 0, 2], **params), every[[n - 1, 0, 2]])
    with pytest.raises(ValueError, match=f"positions in the {n} documents"):
        harness_suite.evaluate(model, indices=[n], **params)
    # the identity covers the task's version (and its YAML and data bytes)
    before = exp.task_identities["harness"]
    (tmp_path / "tasks" / "tiny.yaml").write_text(TASK_YAML.format(data=data, version="2.0"))
    assert Experiment.from_file(spec).task_identities["harness"] != before
