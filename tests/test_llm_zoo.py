"""The LLM demo's data: skills answer correctly, held-out prompts are disjoint and never trained on."""
from __future__ import annotations

import random

from explorer.demo import llm_zoo


def test_skill_answers_are_right():
    rng = random.Random(0)
    for _ in range(50):
        p, a = llm_zoo.skill_example("reverse", rng)
        assert a == p[len("rev "):-1][::-1]
        p, a = llm_zoo.skill_example("sort", rng)
        assert a == "".join(sorted(p[len("sort "):-1]))
        p, a = llm_zoo.skill_example("upper", rng)
        assert a == p[len("up "):-1].upper()
        p, a = llm_zoo.skill_example("dup", rng)
        assert a == "".join(ch * 2 for ch in p[len("dup "):-1])
        p, a = llm_zoo.skill_example("add", rng)
        x, y = p[len("add "):-1].split("+")
        assert int(a) == int(x) + int(y)


def test_held_out_prompts_are_disjoint_and_never_drawn_for_training():
    for skill in llm_zoo.SKILLS:
        splits = llm_zoo.held_out(skill, 150, seed=0)
        val = {r["prompt"] for r in splits["validation"]}
        test = {r["prompt"] for r in splits["test"]}
        assert len(val) == len(test) == 150 and not val & test
        draw = llm_zoo._unseen(lambda rng, s=skill: llm_zoo.skill_example(s, rng), val | test)
        rng = random.Random(1)
        assert not {draw(rng)[0] for _ in range(3000)} & (val | test)
    assert llm_zoo.held_out("sort", 20, seed=0) == llm_zoo.held_out("sort", 20, seed=0)  # seeded


def test_the_character_tokenizer_round_trips_every_skill():
    tok = llm_zoo.char_tokenizer()
    rng = random.Random(2)
    for skill in llm_zoo.SKILLS:
        p, a = llm_zoo.skill_example(skill, rng)
        ids = tok(p + a + "\n")["input_ids"]
        assert ids[0] == tok.bos_token_id and len(ids) == len(p + a + "\n") + 1
        assert tok.decode(ids, skip_special_tokens=True) == p + a + "\n"
