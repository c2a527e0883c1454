"""Builds the offline language-model demo: a tiny Llama pretrained here, and one expert per skill.

Like the CLIP demo zoo (explorer/zoo.py), it needs no download and builds in minutes on two CPU
cores, deterministically from a seed. The skills are synthetic string tasks a small transformer
can learn, written as `prompt=answer` lines over a character-level vocabulary:

- `add`:     "add 37+45=" -> "82"
- `reverse`: "rev kqzt=" -> "tzqk"
- `sort`:    "sort 5813=" -> "1358"
- `upper`:   "up kqzt=" -> "KQZT"

Steps: (1) a character tokenizer (Hugging Face `tokenizers`, saved as a fast tokenizer);
(2) pretrain a Llama-architecture model (transformers' LlamaForCausalLM, random init) on a corpus
that is mostly generic character strings plus a few examples of each skill, so that it knows the
format and the characters but not the skills; (3) fine-tune a copy per skill on that skill alone,
with a small learning rate, so task vectors stay in the pretrained basin and merge; (4) measure
base / expert / equal-weight task arithmetic exact match on held-out prompts, write the manifest
and one Hugging Face folder per model (config.json, tokenizer, model.safetensors).

``ensure_llm_zoo`` reuses a zoo whose manifest has the same configuration hash.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import string
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

DEFAULT_DIR = Path("cache/llm-zoo")
MANIFEST = "manifest.json"
BUILD_VERSION = "1"
ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " +=\n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
SKILLS = ("add", "reverse", "sort", "upper")


# --------------------------------------------------------------------------- tokenizer and model
def char_tokenizer(alphabet: str = ALPHABET):
    """A fast character-level tokenizer: one id per character, BOS prepended, specials first."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_llama(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int = 384,
               max_positions: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised LlamaForCausalLM of the given (tiny) size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def save_folder(model, tokenizer, out: str | os.PathLike, max_shard_size: str | int = "5GB") -> Path:
    """A Hugging Face model folder: config.json, tokenizer files, (sharded) model.safetensors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    return out
