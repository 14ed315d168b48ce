"""Format of procedural samples: LLaVA turns, answer-format instructions, length limits, determinism and
parameter validation."""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from filters.rules import RuleParams, conversation_format_error
from generators.procedural import FAMILIES, ProceduralParams, generate_sample

FAMILY_NAMES = ("SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthMultiChoice", "SynthConvShort",
                "SynthContrastShort")
PRETRAINING = FAMILY_NAMES[:4]
MAX_QAS = {"SynthMultiChoice": 8, "SynthConvShort": 8, "SynthContrastShort": 7}
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
SEEDS = range(40)
REPO = Path(__file__).resolve().parents[1]


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fingerprint(sample) -> str:
    text = json.dumps([sample.caption, sample.description, sample.conversations, sample.metadata()], sort_keys=True)
    return hashlib.sha256(text.encode() + png_bytes(sample.image)).hexdigest()


@pytest.fixture(scope="module")
def samples():
    params = ProceduralParams()
    return {family: [generate_sample(family, seed, params) for seed in SEEDS] for family in FAMILY_NAMES}


def test_the_registry_serves_exactly_the_procedural_families():
    assert FAMILIES.names() == sorted(FAMILY_NAMES)
    with pytest.raises(KeyError, match=r"unknown procedural task family 'SynthScene'; known: SynthColor, "):
        generate_sample("SynthScene", 0, ProceduralParams())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_conversations_follow_the_llava_format(samples, family):
    rules = RuleParams(max_caption_words=12, max_qa_turns=8)
    for sample in samples[family]:
        turns = sample.conversations
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        assert turns[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])
        assert len(sample.caption.split()) <= 12
        assert 30 <= len(sample.description.split()) <= 90, sample.description
        assert len(sample.qa) == len(turns) // 2
        assert conversation_format_error(turns, rules) is None


@pytest.mark.parametrize("family", PRETRAINING)
def test_pretraining_samples_are_one_brief_caption_turn(samples, family):
    prompts = set(ProceduralParams().caption_prompts)
    used = set()
    for sample in samples[family]:
        human, gpt = sample.conversations
        prompt = human["value"].removeprefix("<image>\n")
        assert prompt in prompts and gpt["value"] == sample.caption
        used.add(prompt)
    assert len(used) > 5  # prompts vary across samples


def test_multiple_choice_mixes_lettered_a_to_d_and_yes_no(samples):
    option_counts = set()
    letters = set()
    for sample in samples["SynthMultiChoice"]:
        assert 3 <= len(sample.qa) <= MAX_QAS["SynthMultiChoice"]
        for human, gpt in zip(sample.conversations[0::2], sample.conversations[1::2]):
            lines = human["value"].removeprefix("<image>\n").split("\n")
            assert lines[-1] == MC_INSTRUCTION
            options = [re.fullmatch(r"([A-D])\. (.+)", line).groups() for line in lines[1:-1]]
            assert [letter for letter, _ in options] == list("ABCD"[:len(options)])
            texts = [text for _, text in options]
            assert len(set(texts)) == len(texts)
            if len(options) == 2:
                assert texts == ["Yes", "No"]
            assert gpt["value"] in [letter for letter, _ in options]
            option_counts.add(len(options))
            letters.add(gpt["value"])
    assert option_counts == {2, 4} and letters == set("ABCD")


@pytest.mark.parametrize("family", ["SynthConvShort", "SynthContrastShort"])
def test_short_answer_families_ask_for_a_word_or_phrase(samples, family):
    for sample in samples[family]:
        assert 3 <= len(sample.qa) <= MAX_QAS[family]
        questions = [t["value"] for t in sample.conversations[0::2]]
        answers = [t["value"] for t in sample.conversations[1::2]]
        assert all(q.endswith("\n" + SHORT_INSTRUCTION) for q in questions)
        assert all(1 <= len(a.split()) <= 3 for a in answers)
        assert len(set(questions)) == len(questions)
        if family == "SynthContrastShort":
            # Each QA names a panel, in the question ("in the left image") or as the answer ("right").
            assert all(re.search(r"\b(left|right)\b", q + " " + a) for q, a in zip(questions, answers))


def test_contrast_images_are_two_panels_side_by_side(samples):
    for sample in samples["SynthContrastShort"]:
        left, right = sample.metadata()["scenes"]
        width, height = sample.image.size
        assert height == left["height"] == 64 and right["offset_x"] > left["width"]
        assert width == right["offset_x"] + right["width"]
        assert left["offset_x"] == 0


def test_answers_are_spread_over_their_vocabularies(samples):
    """Yes and no, left and right, and several colours come up, so no answer is a constant."""
    answers = {}
    for family in ("SynthMultiChoice", "SynthConvShort", "SynthContrastShort"):
        for sample in samples[family]:
            for entry in sample.qa:
                answers.setdefault(entry["question_type"], []).append(entry["answer_text"])
    assert 0.3 < answers["exists"].count("yes") / len(answers["exists"]) < 0.7
    assert {"left", "right"} <= set(answers["relation_horizontal"])
    assert len(set(answers["color_of_shape"])) >= 5


def test_same_seed_gives_identical_samples_and_different_seeds_differ(samples):
    params = ProceduralParams()
    for family in FAMILY_NAMES:
        again = [generate_sample(family, seed, params) for seed in SEEDS[:5]]
        assert [fingerprint(s) for s in again] == [fingerprint(s) for s in samples[family][:5]]
        images = {png_bytes(s.image) for s in samples[family]}
        assert len(images) == len(SEEDS)
    across_families = {png_bytes(samples[family][0].image) for family in FAMILY_NAMES}
    assert len(across_families) == len(FAMILY_NAMES)


def test_samples_do_not_depend_on_the_process_hash_seed():
    """String hashing differs per process; a sample must not (no set order or hash() leaks into it)."""
    script = (
        "import hashlib, io, json\n"
        "from generators.procedural import ProceduralParams, generate_sample\n"
        "digest = hashlib.sha256()\n"
        f"for family in {FAMILY_NAMES!r}:\n"
        "    for seed in range(4):\n"
        "        s = generate_sample(family, seed, ProceduralParams())\n"
        "        buffer = io.BytesIO(); s.image.save(buffer, format='PNG')\n"
        "        digest.update(json.dumps([s.conversations, s.metadata(), s.description]).encode() + buffer.getvalue())\n"
        "print(digest.hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                                check=True)
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_params_restrict_backgrounds_signs_and_questions():
    plain = ProceduralParams(backgrounds=("solid",), text_probability=0.0, max_questions=2, max_objects=3)
    signs = ProceduralParams(text_probability=1.0)
    for seed in range(20):
        sample = generate_sample("SynthConvShort", seed, plain)
        scene = sample.metadata()["scenes"][0]
        assert scene["background"]["style"] == "solid"
        assert all(o["kind"] == "shape" for o in scene["objects"]) and len(scene["objects"]) <= 3
        assert len(sample.qa) <= 2
        with_sign = generate_sample("SynthMultiChoice", seed, signs).metadata()["scenes"][0]
        assert sum(o["kind"] != "shape" for o in with_sign["objects"]) == 1


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"image_size": 16}, "image_size", "greater than or equal to 32"),
        ({"image_size": 1024}, "image_size", "less than or equal to 512"),
        ({"max_objects": 7}, "max_objects", "less than or equal to 6"),
        ({"max_questions": 0}, "max_questions", "greater than or equal to 1"),
        ({"text_probability": 1.5}, "text_probability", "less than or equal to 1"),
        ({"backgrounds": ["plaid"]}, "backgrounds", "unknown background styles \\['plaid'\\]; known: solid"),
        ({"backgrounds": []}, "backgrounds", "at least 1 item"),
        ({"caption_prompts": ["<image>\nDescribe."]}, "caption_prompts", "must not contain <image>"),
        ({"caption_prompts": ["  "]}, "caption_prompts", "must not be blank"),
        ({"image_sise": 64}, "image_sise", "Extra inputs are not permitted"),
    ],
)
def test_bad_params_name_the_field(overrides, field, message):
    with pytest.raises(ValidationError, match=message) as error:
        ProceduralParams(**overrides)
    assert [e["loc"][0] for e in error.value.errors()] == [field]
