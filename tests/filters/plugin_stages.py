"""Test stages for the filter tests, loaded through the config's `plugins` list."""

import time

import numpy as np
from PIL import Image, ImageFilter
from pydantic import Field

from pipeline.model_backend import ModelBackend, register_backend
from pipeline.record import ImageCandidate, SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext, register_stage


class PauseParams(StageParams):
    seconds_per_sample: float = Field(0.05, ge=0)


@register_stage("test_pause")
class Pause(Stage):
    """Takes time and changes nothing, so a run can be killed mid-way without its data depending on it."""

    Params = PauseParams
    params: PauseParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        time.sleep(self.params.seconds_per_sample * len(records))


@register_stage("test_candidates")
class Candidates(Stage):
    """Best-of-N stand-in for a diffusion stage: the record's image, a blurred copy and a noisy copy."""

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            image = record.image
            blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))
            noise = np.random.default_rng(record.seed % 2**32).integers(-60, 60, image.shape)
            noisy = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            record.candidates = [ImageCandidate(record.seed + i, candidate)
                                 for i, candidate in enumerate((image, blurred, noisy))]
            record.image = None


WRONG_ANSWER = "chartreuse"  # a colour no procedural scene has


@register_stage("test_wrong_second_answer")
class WrongSecondAnswer(Stage):
    """Corrupts the answer of each record's second QA pair (its first when it has one)."""

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            turns = record.conversations
            answer_turn = 3 if len(turns) >= 4 else 1
            turns[answer_turn] = {**turns[answer_turn], "value": WRONG_ANSWER}


class ScriptedJudgeParams(StageParams):
    marker_dir: str
    garble_every: int = Field(0, ge=0, description="Answer every n-th request with broken JSON (0: never)")


@register_backend("test_scripted_judge")
class ScriptedJudge(ModelBackend):
    """A chat backend answering the judge and statement prompts by rule: an answer naming the planted wrong
    colour is incorrect, every other is correct; a statement is the pair's question and answer joined.
    It writes one marker file per request served, so a test can count model calls."""

    Params = ScriptedJudgeParams
    params: ScriptedJudgeParams

    def chat(self, requests: list[dict]) -> list[dict]:
        import json
        import os
        import re
        from pathlib import Path

        from generators.llm.chat import chat_result

        folder = Path(self.params.marker_dir)
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        for request in requests:
            (folder / f"call.{os.urandom(4).hex()}").touch()
            prompt = request["messages"][-1]["content"]
            pairs = re.findall(r"^(\d+)\. Q: (.*?) A: (.*)$", prompt, re.MULTILINE)
            if "statements" in prompt:
                body = {"statements": [f"{q.strip()} {a.strip()}" for _, q, a in pairs]}
            else:
                body = {"verdicts": [{"index": int(i), "correct": WRONG_ANSWER not in a,
                                      "reason": "names a colour the description lacks" if WRONG_ANSWER in a else ""}
                                     for i, _, a in pairs]}
            text = json.dumps(body)
            if self.params.garble_every and request["seed"] % self.params.garble_every == 0:
                text = text[:-3]
            results.append(chat_result(text, "stop", len(prompt.split()), len(text.split())))
        return results
