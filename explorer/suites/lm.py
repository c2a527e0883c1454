"""Language-model tasks from a JSONL file, evaluated on the in-memory (merged) model.

One record per line:

- `exact_match` (default): `{"prompt": "12+7=", "answer": "19"}`. Greedy decoding; the
  continuation is cut at `stop` (default a newline) and stripped; it must equal the answer.
- `multiple_choice`: `{"prompt": ..., "choices": ["a", "b"], "answer": 1}` (an index or the
  choice's text). The choice with the highest log-likelihood given the prompt wins
  (`normalize: true` divides by the choice's token count).
- `loss`: mean cross-entropy (nats per token) of the answer given the prompt; minimised.

Prompts are tokenised once per (file contents, tokenizer, options) and kept, batched by length
(on the model's device), so each merge costs forward passes only. The tokenizer is the model's
own (`model.name_or_path`, a local folder) unless `tokenizer` names one; nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("exact_match", "multiple_choice", "loss")
#: Below this many parameters a CPU evaluation runs on one thread: its matrices are so small that
#: thread hand-offs cost more than they bring (tens of times slower on a busy 2-core machine).
SMALL_MODEL = 20_000_000
_TOKENIZERS: dict[str, object] = {}
_DATA: dict[tuple, "LMData"] = {}


@dataclass
class LMData:
    """A task's tokenised records, grouped into batches (lists of record indices) by length."""

    prompts: list[list[int]]
    answers: list[str]
    answer_ids: list[list[int]]           # exact_match / loss: the answer's tokens
    choices: list[list[list[int]]]         # multiple_choice: each choice's tokens
    labels: list[int]                      # multiple_choice: index of the right choice
    batches: list[list[int]]


def _resolve(path: str, spec_dir: str | os.PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or spec_dir is None else Path(spec_dir) / p


def read_records(path: Path, metric: str) -> list[dict]:
    """The JSONL records, each checked for the fields `metric` needs (errors name file and line)."""
    if not path.is_file():
        raise ValueError(f"{path}: data file not found")
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise ValueError(f"{path}:{n}: each line needs a string 'prompt'")
            if metric == "multiple_choice":
                choices = rec.get("choices")
                if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                    raise ValueError(f"{path}:{n}: 'choices' must be a list of at least 2 strings")
                ans = rec.get("answer")
                if isinstance(ans, str) and ans in choices:
                    rec["answer"] = choices.index(ans)
                elif not (isinstance(ans, int) and 0 <= ans < len(choices)):
                    raise ValueError(f"{path}:{n}: 'answer' must be a choice index or one of the choices")
            elif not isinstance(rec.get("answer"), str):
                raise ValueError(f"{path}:{n}: 'answer' must be a string")
            records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def tokenizer_for(model, tokenizer: str | None = None, spec_dir=None):
    """The tokenizer from `tokenizer` (a local folder) or the model's own folder, loaded once."""
    from transformers import AutoTokenizer

    source = str(_resolve(tokenizer, spec_dir)) if tokenizer else getattr(model, "name_or_path", None)
    if not source or not Path(source).is_dir():
        raise ValueError("no local tokenizer: pass params.tokenizer (a folder with the tokenizer files)")
    tok = _TOKENIZERS.get(source)
    if tok is None:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        _TOKENIZERS[source] = tok
    return tok


def _encode(tok, text: str, special: bool) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _continuation(tok, prompt_ids: list[int], prompt: str, text: str) -> list[int]:
    """Tokens of `text` as they follow `prompt` (encoded jointly when that splits cleanly)."""
    whole = _encode(tok, prompt + text, True)
    if whole[: len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return _encode(tok, text, False)


def prepare(path: Path, tok, metric: str, batch_size: int, limit: int | None) -> LMData:
    records = read_records(path, metric)[:limit]
    prompts = [_encode(tok, r["prompt"], True) for r in records]
    answers, answer_ids, choices, labels = [], [], [], []
    for r, p in zip(records, prompts):
        if metric == "multiple_choice":
            choices.append([_continuation(tok, p, r["prompt"], c) for c in r["choices"]])
            labels.append(int(r["answer"]))
            answers.append(r["choices"][int(r["answer"])])
        else:
            answers.append(r["answer"])
            answer_ids.append(_continuation(tok, p, r["prompt"], r["answer"]))
    order = sorted(range(len(records)), key=lambda i: len(prompts[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return LMData(prompts, answers, answer_ids, choices, labels, batches)


def _pad_id(tok) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tok, attr, None)
        if v is not None:
            return int(v)
    return 0


def _left_padded(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _batches_of(data: LMData, rows: list[int] | None, batch_size: int) -> list[list[int]]:
    """The prepared batches, or batches of just `rows` (shortest prompts first, like `prepare`)."""
    if rows is None:
        return data.batches
    order = sorted(rows, key=lambda i: len(data.prompts[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def exact_match(model, tok, data: LMData, max_new_tokens: int, stop: str | None,
                rows: list[int] | None = None, batch_size: int = 32) -> float | dict[int, float]:
    """Fraction of prompts whose greedy continuation (cut at `stop`, stripped) equals the answer;
    with `rows`, {row: 1.0 or 0.0} for those prompts only."""
    device, pad = _device(model), _pad_id(tok)
    correct = 0
    hits: dict[int, float] = {}
    for batch in _batches_of(data, rows, batch_size):
        ids, mask = _left_padded([data.prompts[i] for i in batch], pad, device)
        budget = min(max_new_tokens, max(len(data.answer_ids[i]) for i in batch) + 2)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=budget, do_sample=False,
                             pad_token_id=pad, eos_token_id=getattr(tok, "eos_token_id", None))
        texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        for i, text in zip(batch, texts):
            if stop:
                text = text.split(stop, 1)[0]
            hit = text.strip() == data.answers[i].strip()
            correct += hit
            hits[i] = float(hit)
    return hits if rows is not None else correct / len(data.prompts)


@torch.inference_mode()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad: int, batch_size: int) -> list[tuple[float, int]]:
    """(Σ log p(continuation | context), its token count) for each (context, continuation) pair."""
    device = _device(model)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        rows, cols, targets = [], [], []
        for r, i in enumerate(idx):
            ctx, cont = pairs[i]
            for j, t in enumerate(cont):
                rows.append(r)
                cols.append(len(ctx) + j - 1)  # the logits at position p predict token p + 1
                targets.append(t)
        picked = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)].float()
        lp = F.log_softmax(picked, dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])[:, 0].cpu()
        k = 0
        for i in idx:
            n = len(pairs[i][1])
            out[i] = (float(lp[k:k + n].sum()), n)
            k += n
    return out


def multiple_choice(model, tok, data: LMData, batch_size: int, normalize: bool,
                    rows: list[int] | None = None) -> float | dict[int, float]:
    """Share of prompts whose most likely choice is the labelled one; with `rows`, {row: 1.0 or 0.0}."""
    pairs, owner = [], []
    for i in (range(len(data.prompts)) if rows is None else rows):
        p, cs = data.prompts[i], data.choices[i]
        for c in cs:
            pairs.append((p, c))
            owner.append(i)
    scores = continuation_logprobs(model, pairs, _pad_id(tok), batch_size)
    best: dict[int, tuple[float, int]] = {}
    counters: dict[int, int] = {}
    for (lp, n), i in zip(scores, owner):
        j = counters.get(i, 0)
        counters[i] = j + 1
        s = lp / max(n, 1) if normalize else lp
        if i not in best or s > best[i][0]:
            best[i] = (s, j)
    if rows is not None:
        return {i: float(best[i][1] == data.labels[i]) for i in best}
    return sum(best[i][1] == data.labels[i] for i in best) / len(data.prompts)


def answer_loss(model, tok, data: LMData, batch_size: int) -> float:
    scores = continuation_logprobs(model, list(zip(data.prompts, data.answer_ids)), _pad_id(tok), batch_size)
    return -sum(lp for lp, _ in scores) / max(1, sum(n for _, n in scores))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluate(model, *, data: str, metric: str = "exact_match", batch_size: int = 32, max_new_tokens: int = 32,
             stop: str | None = "\n", normalize: bool = False, limit: int | None = None, tokenizer: str | None = None,
             spec_dir: str | os.PathLike | None = None, indices=None) -> float | np.ndarray:
    """Accuracy in [0, 1] (exact_match, multiple_choice) or nats per token (loss) on `data` (JSONL).

    `indices` (positions among the file's records, see `n_examples`; accuracies only): score just
    those prompts and return one 1.0/0.0 per prompt, whose mean is the accuracy.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    prepared, tok = _prepared(model, data, metric, batch_size, limit, tokenizer, spec_dir)
    rows = None
    if indices is not None:
        if metric == "loss":
            raise ValueError("metric 'loss' is a per-token mean and cannot be measured on a subset of prompts")
        rows = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        if rows and (min(rows) < 0 or max(rows) >= len(prepared.prompts)):
            raise ValueError(f"indices must be positions in the {len(prepared.prompts)} prompts of {data}")
    was_training = model.training
    threads = torch.get_num_threads()
    if _device(model).type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL:
        torch.set_num_threads(1)
    model.eval()
    try:
        if metric == "exact_match":
            got = exact_match(model, tok, prepared, max_new_tokens, stop, rows, batch_size)
        elif metric == "multiple_choice":
            got = multiple_choice(model, tok, prepared, batch_size, normalize, rows)
        else:
            return answer_loss(model, tok, prepared, batch_size)
        return got if rows is None else np.array([got[i] for i in rows], dtype=float)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)


def _prepared(model, data, metric, batch_size, limit, tokenizer, spec_dir) -> tuple[LMData, object]:
    path = _resolve(data, spec_dir)
    if not path.is_file():
        raise ValueError(f"{path}: data file not found")
    tok = tokenizer_for(model, tokenizer, spec_dir)
    key = (str(path.resolve()), _file_digest(path), id(tok), metric, batch_size, limit)
    prepared = _DATA.get(key)
    if prepared is None:
        prepared = prepare(path, tok, metric, batch_size, limit)
        _DATA[key] = prepared
    return prepared, tok


def n_examples(model, *, data: str, metric: str = "exact_match", batch_size: int = 32, limit: int | None = None,
               tokenizer: str | None = None, spec_dir: str | os.PathLike | None = None, **_ignored) -> int | None:
    """How many prompts `evaluate` scores with these params; None for `loss`, which cannot be subsampled."""
    if metric == "loss":
        return None
    return len(_prepared(model, data, metric, batch_size, limit, tokenizer, spec_dir)[0].prompts)


evaluate.n_examples = n_examples  # type: ignore[attr-defined]
#: Versioned by hand from here on (bump it when a change alters a score); the source hashes before
#: `indices` came (through the alias and directly) measured the same, so their results are served.
evaluate.version = "lm-jsonl-2"  # type: ignore[attr-defined]
evaluate.previous_versions = (  # type: ignore[attr-defined]
    "source:be28a46adb600d7d9444eb5506ee58949f9a4bb0815b1f4de6ea72951d55a365",
    "source:48b3e10d88e76674d2fdd1b7ccbdf2658310b854d58c670bc6017f09e8e4078e",
)


def fingerprint(*, data: str, metric: str = "exact_match", limit: int | None = None, tokenizer: str | None = None,
                spec_dir: str | os.PathLike | None = None, **_ignored) -> str:
    """Changes when the data file's bytes (or the tokenizer folder's files) change."""
    path = _resolve(data, spec_dir)
    parts = [f"lm-jsonl:{_file_digest(path) if path.is_file() else 'missing'}", f"metric={metric}", f"limit={limit}"]
    if tokenizer:
        folder = _resolve(tokenizer, spec_dir)
        for f in sorted(folder.glob("*")) if folder.is_dir() else []:
            if f.is_file() and ("token" in f.name or f.name.startswith("vocab")):
                parts.append(f"{f.name}={_file_digest(f)[:16]}")
    return ";".join(parts)


evaluate.fingerprint = fingerprint  # type: ignore[attr-defined]
