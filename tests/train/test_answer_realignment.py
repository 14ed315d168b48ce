"""Answer realignment: the projector alone learns to read the image's answers through the LLM's output path."""

from __future__ import annotations

import json

import pytest

from tests.train.test_vision_warmup import changed_parts, tiny_model_and_sources
from train.answer_realignment import RESULT_FILE, realign_answers
from train.config import TrainConfigError, VisionWarmupConfig, load_train_config
from train.vision_warmup import VisionWarmupError


def test_realignment_trains_the_projector_alone_and_raises_the_held_out_first_token_accuracy(small_dataset,
                                                                                            tmp_path):
    model, sources = tiny_model_and_sources(small_dataset, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = VisionWarmupConfig(steps=1, answer_through_llm=True, realign_steps=60, batch_size=16, lr=1e-2)

    result = realign_answers(model, sources, config, seed=0, out=tmp_path, progress=False)

    assert changed_parts(before, model) == {"mm_projector"}  # the tower and the decoder (its lookup) untouched
    accuracy = result["held_out_first_token_accuracy"]
    assert result["held_out"] > 0 and accuracy["after"] > accuracy["before"] + 0.1
    assert result["last_loss"] < result["first_loss"]
    assert json.loads((tmp_path / RESULT_FILE).read_text())["steps"] == 60


def test_a_frozen_projector_is_a_clear_error(small_dataset, tmp_path):
    model, sources = tiny_model_and_sources(small_dataset, tmp_path)
    model.set_trainable({"mm_projector": False})
    with pytest.raises(VisionWarmupError, match="projector is frozen"):
        realign_answers(model, sources, VisionWarmupConfig(realign_steps=2), seed=0, progress=False)


@pytest.mark.parametrize("missing", ["vision_warmup.steps=0", "vision_warmup.answer_through_llm=false",
                                     "binding_warmup.steps=0"])
def test_realignment_without_what_it_realigns_is_a_config_error(missing):
    base = ["vision_warmup.steps=5", "vision_warmup.answer_through_llm=true", "binding_warmup.steps=5",
            "vision_warmup.realign_steps=5"]
    load_train_config("tiny", base)
    with pytest.raises(TrainConfigError, match="vision_warmup.realign_steps needs"):
        load_train_config("tiny", [*base, missing])
