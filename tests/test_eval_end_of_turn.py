"""The eval stage's `end_of_turn`: does the model end its turn right after a right answer?

A base that never learned its chat template's end token gives tuned models that answer and run
on; greedy exact match cannot see it (answers are cut at the first special token), this can.
"""

from __future__ import annotations

from pathlib import Path

import torch
from stage_helpers import one_thread  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer

from graftline.engine.stages.eval import end_of_turn_probability, expected_answer
from graftline.engine.toy import tasks
from graftline.engine.toy.recipe import END


def test_end_of_turn_sees_an_end_token_the_model_cannot_predict(toy_base: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(toy_base))
    tokenizer = AutoTokenizer.from_pretrained(str(toy_base))
    rows = list(tasks.eval_rows())[:64]
    answers = [expected_answer(r) for r in rows]
    learned = end_of_turn_probability(model, tokenizer, rows, answers)
    assert learned is not None and 0.0 < learned <= 1.0

    # the planted fault: <|end|>'s output row is an unused letter's, as in a base that never
    # saw the token (the toy before recipe version 4, Llama-3 base's <|eot_id|>)
    end, unused = tokenizer.convert_tokens_to_ids([END, "Q"])
    with torch.no_grad():
        model.lm_head.weight[end] = model.lm_head.weight[unused]
    never = end_of_turn_probability(model, tokenizer, rows, answers)
    assert never is not None and never < learned / 5, (never, learned)

    # rows without a chat prompt or an answer are not measured
    assert end_of_turn_probability(model, tokenizer, [{"text": "12+34=46"}], [None]) is None
