"""The prompt library: every template renders for every family, templates are versioned and hashed, the
response schemas enforce each family's limits, and a config naming a category no template serves fails."""

import pytest

from generators.prompts import schemas
from generators.prompts.conversation import conversation, turns_of
from generators.prompts.families import CAPTION_STEP, DESCRIPTION_STEP, FAMILIES, QA_STEP, family_of
from generators.prompts.library import load_list, load_template
from pipeline.config import ConfigError, load_config
from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION

TWELVE = ["SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthScene", "SynthMultiChoice",
          "SynthConvShort", "SynthConvLong", "SynthReasoning", "SynthTextQA", "SynthContrastShort",
          "SynthContrastLong"]
DESCRIPTION = "A red ball sits beside a sign that reads OPEN DAILY on a wooden table. " * 3
QAS = [{"question": "What colour is the ball?", "answer": "red"}]
VARIABLES = {"seed_caption": "a red ball on a table", "description": DESCRIPTION, "left": "A black cat.",
             "right": "A white cat.", "differences": ["colour of the cat"],
             "text_elements": [{"text": "OPEN DAILY", "kind": "sign"}], "caption": "a red ball", "qas": QAS}


def test_the_twelve_families_are_served():
    assert list(FAMILIES) == TWELVE
    assert [f.kind for f in FAMILIES.values()].count("pretraining") == 5


@pytest.mark.parametrize("name", TWELVE)
def test_every_template_renders_for_every_family(name):
    family = FAMILIES[name]
    steps = [CAPTION_STEP] if family.kind == "pretraining" else [DESCRIPTION_STEP, QA_STEP]
    for step in steps:
        template = load_template(step, name)
        messages = template.messages(**VARIABLES, limits=family.limits)
        assert [m["role"] for m in messages] == ["system", "user"]
        user = messages[1]["content"]
        assert "{{" not in user and "{%" not in user and "JSON" in user
        assert template.ref.startswith(f"{step}/{name}.v1@") and len(template.sha256) == 64
        if step != QA_STEP:
            assert VARIABLES["seed_caption"] in user
        else:
            assert DESCRIPTION.strip()[:40] in user or "A black cat." in user


def test_statement_and_judge_templates_render_with_their_schemas():
    for step, name in (("statement", "all"), ("judge", "qa"), ("judge", "seed")):
        messages = load_template(step, name).messages(**VARIABLES)
        assert "JSON" in messages[1]["content"]
    schemas.Statements.model_validate({"statements": ["The ball is red."]}, context={"num_qas": 1})
    with pytest.raises(ValueError, match="statements for 2 QAs"):
        schemas.Statements.model_validate({"statements": ["The ball is red."]}, context={"num_qas": 2})
    schemas.QAVerdicts.model_validate({"verdicts": [{"index": 0, "correct": True}]}, context={"num_qas": 1})
    with pytest.raises(ValueError, match="verdicts must cover"):
        schemas.QAVerdicts.model_validate({"verdicts": [{"index": 1, "correct": True}]}, context={"num_qas": 1})


def test_a_missing_variable_is_an_error_naming_the_template():
    with pytest.raises(KeyError, match=r"qa/SynthConvShort\.v1\.yaml"):
        load_template(QA_STEP, "SynthConvShort").messages(limits=FAMILIES["SynthConvShort"].limits)


def test_templates_are_versioned_and_a_stage_may_use_its_own_folder(tmp_path):
    (tmp_path / "qa").mkdir()
    for version, text in ((1, "one"), (2, "two")):
        (tmp_path / "qa" / f"SynthConvShort.v{version}.yaml").write_text(f"system: s\nuser: '{text} JSON'\n")
    newest = load_template(QA_STEP, "SynthConvShort", template_dir=tmp_path)
    pinned = load_template(QA_STEP, "SynthConvShort", version=1, template_dir=tmp_path)
    assert (newest.version, pinned.version) == (2, 1) and newest.sha256 != pinned.sha256
    with pytest.raises(FileNotFoundError, match="no version 3"):
        load_template(QA_STEP, "SynthConvShort", version=3, template_dir=tmp_path)
    prompts, digest = load_list("conversation", "caption_prompts", "prompts")
    assert len(prompts) >= 10 and len(digest) == 64


def limits(name):
    return {"limits": FAMILIES[name].limits}


def test_schemas_enforce_the_papers_limits():
    with pytest.raises(ValueError, match=schemas.OVER_LONG):
        schemas.ColorCaption.model_validate({"caption": "red " * 13, "colors": ["red"]}, context=limits("SynthColor"))
    with pytest.raises(ValueError, match="not in the caption"):
        schemas.ColorCaption.model_validate({"caption": "a red ball", "colors": ["blue"]},
                                            context=limits("SynthColor"))
    with pytest.raises(ValueError, match="fewer than 110"):
        schemas.Description.model_validate({"description": "too short"}, context=limits("SynthConvShort"))
    with pytest.raises(ValueError, match=schemas.OVER_LONG):
        schemas.ShortQAs.model_validate({"qas": [{"question": "q?", "answer": "one two three four five"}]},
                                        context=limits("SynthConvShort"))
    with pytest.raises(ValueError):  # the answer must be one of A-D
        schemas.MultipleChoiceQAs.model_validate({"questions": [{"kind": "multiple_choice", "question": "q?",
                                                                 "options": ["a", "b", "c", "d"], "answer": "E"}]})
    with pytest.raises(ValueError, match="options repeat"):
        schemas.MultipleChoiceQAs.model_validate({"questions": [{"kind": "multiple_choice", "question": "q?",
                                                                 "options": ["a", "a", "c", "d"], "answer": "A"}]})
    with pytest.raises(ValueError, match="no QA covers"):
        schemas.TextQAs.model_validate({"qas": QAS}, context={**limits("SynthTextQA"), "text_elements": ["OPEN"]})
    with pytest.raises(ValueError, match="neither 'left' nor 'right'"):
        schemas.ContrastShortQAs.model_validate({"qas": QAS}, context=limits("SynthContrastShort"))
    with pytest.raises(ValueError, match="at most 5 items"):  # too_long: the stage's llm_over_long too
        schemas.TextQAs.model_validate({"qas": QAS * 6}, context={**limits("SynthTextQA"), "text_elements": []})


def test_conversations_carry_the_papers_answer_format_instructions():
    short = schemas.ShortQAs.model_validate({"qas": QAS}, context=limits("SynthConvShort"))
    turns = conversation(turns_of(short, "short"))
    assert turns[0]["value"].startswith("<image>\n") and turns[0]["value"].endswith(SHORT_ANSWER_INSTRUCTION)
    choice = schemas.MultipleChoiceQAs.model_validate({"questions": [
        {"kind": "multiple_choice", "question": "Which colour?", "options": ["red", "blue", "green", "pink"],
         "answer": "A"}, {"kind": "yes_no", "question": "Is it a ball?", "answer": "no"}]})
    entries = turns_of(choice, "multiple_choice")
    assert entries[0][0].endswith(MULTIPLE_CHOICE_INSTRUCTION) and "A. red\nB. blue" in entries[0][0]
    assert [e[1] for e in entries] == ["A", "B"]  # yes/no is a two-option letter question


def test_a_category_no_template_serves_is_a_config_error():
    with pytest.raises(ConfigError, match="no prompt template serves category 'SynthWeather'"):
        load_config("synth-tiny-models", ["categories={SynthWeather: {train: 2}}"])
    config = load_config("synth-tiny-models", ["categories={Colours: {train: 2}}",
                                               "stages.2.params.families={Colours: SynthColor}",
                                               "stages.3.params.families={Colours: SynthColor}",
                                               "stages.4.params.families={Colours: SynthColor}"])
    assert family_of("Colours", config.stages[2].typed_params().families).name == "SynthColor"
