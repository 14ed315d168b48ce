"""Response schemas: what each LLM step must return, as pydantic models enforcing the family's limits.

The JSON schema of a model (``model_json_schema()``) constrains decoding; validation then checks what a JSON
schema cannot say (word counts, an answer among the options, every text element covered), reading the
family's ``Limits`` from the validation context. Length violations raise the error type ``over_long`` so a
stage can tell an over-long output from a wrong one.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

OVER_LONG = "over_long"  # the error type of every length violation
LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


class Limits(BaseModel):
    """A family's limits (defaults: the paper's); a stage's ``limits`` param may override any of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caption_max_words: int = Field(12, ge=1)
    description_min_words: int = Field(110, ge=1)
    description_max_words: int = Field(180, ge=1)
    min_qas: int = Field(1, ge=1)
    max_qas: int = Field(8, ge=1)
    short_answer_max_words: int = Field(4, ge=1)
    long_answer_min_words: int = Field(8, ge=1)
    max_colors: int = Field(3, ge=1)
    max_per_object_type: int = Field(3, ge=1)
    max_objects: int = Field(6, ge=1)
    max_text_elements: int = Field(3, ge=1)
    max_text_words: int = Field(12, ge=1)


def words(text: str) -> int:
    return len(text.split())


def limits_of(info: ValidationInfo) -> Limits:
    limits = (info.context or {}).get("limits")
    return limits if isinstance(limits, Limits) else Limits()


def _too_long(what: str, count: int, limit: int) -> PydanticCustomError:
    return PydanticCustomError(OVER_LONG, "{what} has {count} words, more than {limit}",
                               {"what": what, "count": count, "limit": limit})


def _contains(text: str, part: str) -> bool:
    return part.strip().lower() in text.lower()


NonEmpty = Annotated[str, Field(min_length=1)]


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- pretraining captions (at most 12 words; the family's focus stated alongside, so it can be checked) ------


class Caption(Response):
    caption: NonEmpty

    @field_validator("caption")
    @classmethod
    def _short(cls, caption: str, info: ValidationInfo) -> str:
        limit = limits_of(info).caption_max_words
        if words(caption) > limit:
            raise _too_long("caption", words(caption), limit)
        return caption.strip()


class ColorCaption(Caption):
    colors: list[NonEmpty] = Field(min_length=1, max_length=3, description="The colours the caption names")

    @model_validator(mode="after")
    def _colors_named(self, info: ValidationInfo) -> ColorCaption:
        if len(self.colors) > limits_of(info).max_colors:
            raise ValueError(f"{len(self.colors)} colours, at most {limits_of(info).max_colors} allowed")
        missing = [c for c in self.colors if not _contains(self.caption, c)]
        if missing:
            raise ValueError(f"colours {missing} are not in the caption")
        return self


class CountedObject(Response):
    name: NonEmpty
    count: int = Field(ge=1, le=3)


class CountCaption(Caption):
    objects: list[CountedObject] = Field(min_length=1, max_length=6)

    @model_validator(mode="after")
    def _counts(self, info: ValidationInfo) -> CountCaption:
        limits = limits_of(info)
        if any(o.count > limits.max_per_object_type for o in self.objects):
            raise ValueError(f"more than {limits.max_per_object_type} objects of one type")
        total = sum(o.count for o in self.objects)
        if total > limits.max_objects:
            raise ValueError(f"{total} objects in all, at most {limits.max_objects} allowed")
        missing = [o.name for o in self.objects if not _contains(self.caption, o.name)]
        if missing:
            raise ValueError(f"objects {missing} are not in the caption")
        return self


class SpatialCaption(Caption):
    relation: NonEmpty = Field(description="The relative-position phrase used, e.g. 'to the left of'")

    @model_validator(mode="after")
    def _relation_used(self) -> SpatialCaption:
        if not _contains(self.caption, self.relation):
            raise ValueError(f"relation {self.relation!r} is not in the caption")
        return self


TextKind = Literal["sign", "poster", "billboard", "slogan", "banner", "label", "storefront", "menu", "plaque"]


class TextCaption(Caption):
    text: NonEmpty = Field(description="The words written in the image")
    text_kind: TextKind

    @model_validator(mode="after")
    def _text_shown(self, info: ValidationInfo) -> TextCaption:
        if words(self.text) > limits_of(info).max_text_words:
            raise _too_long("text", words(self.text), limits_of(info).max_text_words)
        if not _contains(self.caption, self.text):
            raise ValueError(f"text {self.text!r} is not in the caption")
        return self


class SceneCaption(Caption):
    element: NonEmpty = Field(description="The one landmark or scene element")

    @model_validator(mode="after")
    def _element_named(self) -> SceneCaption:
        if not _contains(self.caption, self.element):
            raise ValueError(f"element {self.element!r} is not in the caption")
        return self


# --- descriptions (110-180 words; SynthTextQA centred on text elements; SynthContrast as a pair) -------------


def check_description(text: str, limits: Limits, what: str = "description") -> str:
    count = words(text)
    if count > limits.description_max_words:
        raise _too_long(what, count, limits.description_max_words)
    if count < limits.description_min_words:
        raise ValueError(f"{what} has {count} words, fewer than {limits.description_min_words}")
    return text.strip()


class Description(Response):
    description: NonEmpty

    @field_validator("description")
    @classmethod
    def _length(cls, text: str, info: ValidationInfo) -> str:
        return check_description(text, limits_of(info))


class TextElement(Response):
    text: NonEmpty = Field(description="The exact words rendered")
    kind: TextKind


class TextDescription(Description):
    text_elements: list[TextElement] = Field(min_length=1, max_length=3)

    @model_validator(mode="after")
    def _elements(self, info: ValidationInfo) -> TextDescription:
        limits = limits_of(info)
        if len(self.text_elements) > limits.max_text_elements:
            raise ValueError(f"{len(self.text_elements)} text elements, at most {limits.max_text_elements}")
        total = sum(words(e.text) for e in self.text_elements)
        if total > limits.max_text_words:
            raise _too_long("rendered text", total, limits.max_text_words)
        missing = [e.text for e in self.text_elements if not _contains(self.description, e.text)]
        if missing:
            raise ValueError(f"text elements {missing} are not in the description")
        return self


class ContrastDescriptions(Response):
    left: NonEmpty = Field(description="The left image's description")
    right: NonEmpty = Field(description="The right image's description")
    differences: list[NonEmpty] = Field(min_length=1, max_length=4, description="What differs: colour, count, "
                                        "type or placement")

    @model_validator(mode="after")
    def _pair(self, info: ValidationInfo) -> ContrastDescriptions:
        self.left = check_description(self.left, limits_of(info), "left description")
        self.right = check_description(self.right, limits_of(info), "right description")
        if self.left.lower() == self.right.lower():
            raise ValueError("the left and right descriptions are the same")
        return self


# --- QA (from the description text; the conversation builder adds the paper's answer-format instructions) ---


def check_count(items: list[Any], limits: Limits, what: str = "QAs") -> None:
    if len(items) > limits.max_qas:
        raise PydanticCustomError(OVER_LONG, "{n} {what}, more than {limit}",
                                  {"n": len(items), "what": what, "limit": limits.max_qas})
    if len(items) < limits.min_qas:
        raise ValueError(f"{len(items)} {what}, fewer than {limits.min_qas}")


class QA(Response):
    question: NonEmpty
    answer: NonEmpty


class MultipleChoiceQuestion(Response):
    kind: Literal["multiple_choice"]
    question: NonEmpty
    options: list[NonEmpty] = Field(min_length=4, max_length=4, description="Options A, B, C, D in order")
    answer: Literal["A", "B", "C", "D"]

    @field_validator("options")
    @classmethod
    def _distinct(cls, options: list[str]) -> list[str]:
        if len({o.strip().lower() for o in options}) != len(options):
            raise ValueError("options repeat")
        return [o.strip() for o in options]


class YesNoQuestion(Response):
    kind: Literal["yes_no"]
    question: NonEmpty
    answer: Literal["yes", "no"]


class MultipleChoiceQAs(Response):
    questions: list[Annotated[Union[MultipleChoiceQuestion, YesNoQuestion], Field(discriminator="kind")]] = Field(
        min_length=1, max_length=8)

    @model_validator(mode="after")
    def _count(self, info: ValidationInfo) -> MultipleChoiceQAs:
        check_count(self.questions, limits_of(info))
        return self


class QAList(Response):
    qas: list[QA] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _count(self, info: ValidationInfo) -> QAList:
        check_count(self.qas, limits_of(info))
        return self


class ShortQAs(QAList):
    @model_validator(mode="after")
    def _short(self, info: ValidationInfo) -> ShortQAs:
        limit = limits_of(info).short_answer_max_words
        for index, qa in enumerate(self.qas):
            if words(qa.answer) > limit:
                raise _too_long(f"answer {index}", words(qa.answer), limit)
        return self


class LongQAs(QAList):
    @model_validator(mode="after")
    def _detailed(self, info: ValidationInfo) -> LongQAs:
        limit = limits_of(info).long_answer_min_words
        short = [i for i, qa in enumerate(self.qas) if words(qa.answer) < limit]
        if short:
            raise ValueError(f"answers {short} have fewer than {limit} words")
        return self


class ReasoningQAs(LongQAs):
    qas: list[QA] = Field(min_length=1, max_length=6)


class TextQAs(QAList):
    qas: list[QA] = Field(min_length=1, max_length=5)

    @model_validator(mode="after")
    def _covers_text(self, info: ValidationInfo) -> TextQAs:
        texts = (info.context or {}).get("text_elements") or []
        asked = " ".join(f"{qa.question} {qa.answer}" for qa in self.qas)
        missing = [t for t in texts if not _contains(asked, t)]
        if missing:
            raise ValueError(f"no QA covers the text elements {missing}")
        return self


class _ContrastQAs(QAList):
    qas: list[QA] = Field(min_length=1, max_length=7)

    @model_validator(mode="after")
    def _sides(self) -> _ContrastQAs:
        unsided = [i for i, qa in enumerate(self.qas) if not LEFT_RIGHT.search(f"{qa.question} {qa.answer}")]
        if unsided:
            raise ValueError(f"QAs {unsided} say neither 'left' nor 'right'")
        return self


class ContrastShortQAs(_ContrastQAs, ShortQAs):
    pass


class ContrastLongQAs(_ContrastQAs, LongQAs):
    pass


# --- for the filters: statements rewritten from QAs, and judges ---------------------------------------------


class Statements(Response):
    statements: list[NonEmpty] = Field(min_length=1, max_length=8, description="One declarative sentence per QA")

    @model_validator(mode="after")
    def _one_per_qa(self, info: ValidationInfo) -> Statements:
        expected = (info.context or {}).get("num_qas")
        if expected is not None and len(self.statements) != expected:
            raise ValueError(f"{len(self.statements)} statements for {expected} QAs")
        return self


class SeedVerdict(Response):
    verdict: Literal["yes", "no"] = Field(description="yes: a descriptive, coherent prompt for image generation")
    reason: str = ""


class QAVerdict(Response):
    index: int = Field(ge=0)
    correct: bool
    reason: str = ""


class QAVerdicts(Response):
    verdicts: list[QAVerdict] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _one_per_qa(self, info: ValidationInfo) -> QAVerdicts:
        expected = (info.context or {}).get("num_qas")
        if expected is not None and sorted(v.index for v in self.verdicts) != list(range(expected)):
            raise ValueError(f"verdicts must cover QAs 0..{expected - 1} once each")
        return self
