"""A scripted chat backend (a test plugin): it answers each request as the case word in its seed caption says,
to drive every failure path of the LLM steps through the real pipeline. Every call is counted as a file."""

import hashlib
import json
import os
from pathlib import Path

from generators.llm.chat import FINISH_LENGTH, FINISH_STOP, chat_result
from pipeline.model_backend import ModelBackend, register_backend
from pipeline.stage import StageParams

GOOD_DESCRIPTION = {"description": "A red ball rests on a wooden table beside two blue cubes."}
GOOD_QAS = {"qas": [{"question": "What colour is the ball?", "answer": "red"}]}
CONTRAST = {"left": "A black cat sleeps on a red sofa.", "right": "A white cat sleeps on a red sofa.",
            "differences": ["the colour of the cat"]}
CONTRAST_QAS = {"qas": [{"question": "What colour is the cat on the left?", "answer": "black"}]}
# seed caption case word -> the description step's raw text and finish reason
DESCRIPTION_CASES = {
    "good": (json.dumps(GOOD_DESCRIPTION), FINISH_STOP),
    "malformed": ('{"description": "A red ball', FINISH_STOP),
    "truncated": ('{"description": "A red ball rests on', FINISH_LENGTH),
    "empty": ("   ", FINISH_STOP),
    "overlong": (json.dumps({"description": "word " * 400}), FINISH_STOP),
    "wrongschema": (json.dumps({"caption": "A red ball."}), FINISH_STOP),
}


class ScriptedParams(StageParams):
    calls_dir: str


@register_backend("test_scripted_llm")
class ScriptedLLM(ModelBackend):
    Params = ScriptedParams
    params: ScriptedParams

    def chat(self, requests):
        folder = Path(self.params.calls_dir)
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        for request in requests:
            (folder / f"call.{os.getpid()}.{os.urandom(4).hex()}").touch()
            user = request["messages"][-1]["content"]
            if "Image description:" in user or "Left image:" in user:  # the QA steps
                answer = CONTRAST_QAS if "Left image:" in user else GOOD_QAS
                results.append(chat_result(json.dumps(answer), FINISH_STOP, 10, 10))
                continue
            if "two images shown side by side" in user:  # a contrast pair from one seed
                results.append(chat_result(json.dumps(CONTRAST), FINISH_STOP, 10, 10))
                continue
            case = next((word for word in (*DESCRIPTION_CASES, "flaky") if f"case {word} " in user), "good")
            if case == "flaky":  # malformed the first time this prompt is seen, good afterwards
                marker = folder / f"seen.{hashlib.sha256(user.encode()).hexdigest()[:16]}"
                case = "good" if marker.exists() else "malformed"
                marker.touch()
            text, finish = DESCRIPTION_CASES[case]
            results.append(chat_result(text, finish, 10, 10))
        return results
