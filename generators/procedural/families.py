"""One builder per task family: what its scenes hold, its caption, its description and its conversation.

Builders are registered by the category names used in configs; adding a family is adding a builder here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from generators.procedural import language
from generators.procedural.dialogue import Turn, caption_turn, multiple_choice_turn, short_answer_turn
from generators.procedural.layout import SceneLayoutError
from generators.procedural.params import ProceduralParams
from generators.procedural.contrast import CONTRAST_EDITS
from generators.procedural.questions import facts_by_type, select_facts
from generators.procedural.sampling import ObjectSpec, fitting_words, sample_scene
from generators.procedural.scene import Scene
from generators.procedural.vocabulary import OBJECT_COLORS, SHAPES, SIGN_KINDS, SIZES
from pipeline.registry import Registry

MAX_MULTIPLE_CHOICE_QAS = 8
MAX_SHORT_QAS = 8
MAX_CONTRAST_QAS = 7
MIN_QAS = 3
MAX_COLORS_IN_COLOR_SCENES = 3
MAX_SHAPES_PER_COLOR_GROUP = 2
MAX_SAME_TYPE_IN_COUNT_SCENES = 3
MAX_CONTRAST_BASE_SHAPES = 4
SCENE_ATTEMPTS = 20

MULTIPLE_CHOICE_TYPES = ("color_of_shape", "shape_of_color", "count_shape", "count_color", "count_total", "sign_text",
                         "sign_kind", "background_pattern", "background_color", "exists", "relation_check",
                         "color_check", "text_check")
SHORT_ANSWER_TYPES = ("color_of_shape", "shape_of_color", "count_shape", "count_color", "count_total",
                      "relation_horizontal", "relation_vertical", "larger", "side_of_image", "sign_text", "sign_kind",
                      "background_pattern", "background_color", "exists")


@dataclass(frozen=True)
class FamilyContent:
    scenes: tuple[Scene, ...]  # one, or left and right of a contrast pair
    caption: str
    description: str
    turns: tuple[Turn, ...]


FamilyBuilder = Callable[[random.Random, ProceduralParams], FamilyContent]
FAMILIES: Registry[FamilyBuilder] = Registry("procedural task family")


def fitted_scene(rng: random.Random, params: ProceduralParams, make_specs: Callable[[], list[ObjectSpec]]) -> Scene:
    """A scene from freshly drawn specs; crowded draws that cannot be laid out are redrawn."""
    for _ in range(SCENE_ATTEMPTS):
        try:
            return sample_scene(rng, params.image_size, make_specs(), params.backgrounds)
        except SceneLayoutError:
            continue
    raise SceneLayoutError(f"no scene fitted in {params.image_size} px after {SCENE_ATTEMPTS} draws")


def random_shape(rng: random.Random, *, shape: str = "", color: str = "", size: str = "") -> ObjectSpec:
    return ObjectSpec(shape=shape or rng.choice(SHAPES), color=color or rng.choice(list(OBJECT_COLORS)),
                      size=size or rng.choice(SIZES))


def distinct_shapes(rng: random.Random, count: int) -> list[ObjectSpec]:
    """Shapes that differ in both shape and colour, so each is "the <colour> <shape>"."""
    shapes = rng.sample(SHAPES, count)
    colors = rng.sample(list(OBJECT_COLORS), count)
    return [random_shape(rng, shape=s, color=c) for s, c in zip(shapes, colors, strict=True)]


def question_count(rng: random.Random, family_limit: int, params: ProceduralParams) -> int:
    limit = min(family_limit, params.max_questions)
    return rng.randint(min(MIN_QAS, limit), limit)


def pretraining_content(rng: random.Random, params: ProceduralParams, scene: Scene, caption: str,
                        topic: str) -> FamilyContent:
    turn = caption_turn(rng, params.caption_prompts, caption, topic)
    return FamilyContent((scene,), caption, language.describe_scene(scene), (turn,))


# --- pretraining families: one brief-caption turn ----------------------------------------------------------

@FAMILIES.register("SynthColor")
def synth_color(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """One to three colours, each worn by one or two identical shapes, so the caption names every colour."""
    def specs() -> list[ObjectSpec]:
        colors = rng.sample(list(OBJECT_COLORS), rng.randint(1, min(MAX_COLORS_IN_COLOR_SCENES, params.max_objects)))
        groups = [[random_shape(rng, color=c)] for c in colors]
        for _ in range(rng.randint(0, params.max_objects - len(groups))):
            group = rng.choice(groups)
            if len(group) < MAX_SHAPES_PER_COLOR_GROUP:
                group.append(group[0])
        return [spec for group in groups for spec in group]

    scene = fitted_scene(rng, params, specs)
    return pretraining_content(rng, params, scene, language.listing_caption(scene, numbered=False), "colour")


@FAMILIES.register("SynthCount")
def synth_count(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """Up to three groups of identical shapes, at most three per type and six in total, counted in the caption."""
    def specs() -> list[ObjectSpec]:
        shapes = rng.sample(SHAPES, rng.randint(1, 3))
        remaining = params.max_objects
        result = []
        for index, shape in enumerate(shapes):
            reserved = len(shapes) - index - 1  # one for each later group
            count = rng.randint(1, max(1, min(MAX_SAME_TYPE_IN_COUNT_SCENES, remaining - reserved)))
            remaining -= count
            prototype = random_shape(rng, shape=shape)
            result += [prototype] * count
        return result

    scene = fitted_scene(rng, params, specs)
    return pretraining_content(rng, params, scene, language.listing_caption(scene, numbered=True), "count")


@FAMILIES.register("SynthSpatial")
def synth_spatial(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """Two or three distinct shapes; the caption states where one is relative to another."""
    scene = fitted_scene(rng, params, lambda: distinct_shapes(rng, rng.randint(2, min(3, params.max_objects))))
    a, b = rng.sample(scene.shapes, 2)
    return pretraining_content(rng, params, scene, language.relation_caption(a, b), "spatial")


@FAMILIES.register("SynthText")
def synth_text(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """A sign, poster, billboard or banner with one word, and up to two shapes."""
    def specs() -> list[ObjectSpec]:
        kind = rng.choice(SIGN_KINDS)
        board = ObjectSpec(kind=kind, text=rng.choice(fitting_words(kind, params.image_size)))
        return [board, *distinct_shapes(rng, rng.randint(0, 2))]

    scene = fitted_scene(rng, params, specs)
    return pretraining_content(rng, params, scene, language.board_caption(scene), "text")


# --- instruction families: several QAs about one scene -----------------------------------------------------

def instruction_scene(rng: random.Random, params: ProceduralParams) -> Scene:
    def specs() -> list[ObjectSpec]:
        shapes = [random_shape(rng) for _ in range(rng.randint(2, params.max_objects))]
        if rng.random() < params.text_probability:
            kind = rng.choice(SIGN_KINDS)
            return [ObjectSpec(kind=kind, text=rng.choice(fitting_words(kind, params.image_size))), *shapes]
        return shapes

    return fitted_scene(rng, params, specs)


@FAMILIES.register("SynthMultiChoice")
def synth_multi_choice(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """A-D questions and yes/no questions (as A. Yes / B. No), answered with the option's letter."""
    scene = instruction_scene(rng, params)
    candidates = facts_by_type(rng, scene, MULTIPLE_CHOICE_TYPES)
    facts = select_facts(rng, candidates, question_count(rng, MAX_MULTIPLE_CHOICE_QAS, params))
    turns = tuple(multiple_choice_turn(rng, fact) for fact in facts)
    return FamilyContent((scene,), language.overview_caption(scene), language.describe_scene(scene), turns)


@FAMILIES.register("SynthConvShort")
def synth_conv_short(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """Questions answered with a single word or phrase."""
    scene = instruction_scene(rng, params)
    candidates = facts_by_type(rng, scene, SHORT_ANSWER_TYPES)
    facts = select_facts(rng, candidates, question_count(rng, MAX_SHORT_QAS, params))
    turns = tuple(short_answer_turn(fact) for fact in facts)
    return FamilyContent((scene,), language.overview_caption(scene), language.describe_scene(scene), turns)


# --- contrast: two scenes that differ in exactly one attribute ---------------------------------------------

@FAMILIES.register("SynthContrastShort")
def synth_contrast_short(rng: random.Random, params: ProceduralParams) -> FamilyContent:
    """Two panels side by side that differ in one attribute; short questions naming "left" and "right"."""
    limit = min(MAX_CONTRAST_QAS, params.max_questions)
    for _ in range(SCENE_ATTEMPTS):
        count = rng.randint(2, min(MAX_CONTRAST_BASE_SHAPES, params.max_objects))
        left = fitted_scene(rng, params, lambda: [random_shape(rng) for _ in range(count)])
        kinds = list(CONTRAST_EDITS)
        rng.shuffle(kinds)  # the first kind that fits this scene wins, so every kind gets its turn
        for kind in kinds:
            edit = CONTRAST_EDITS[kind](rng, left)
            if edit is None:
                continue
            first, rest = edit.facts[0], edit.facts[1:]  # the question naming the difference opens the talk
            rng.shuffle(rest)
            turns = tuple(short_answer_turn(f) for f in [first, *rest][:limit])
            description = language.describe_contrast(left, edit.difference, edit.change)
            return FamilyContent((left, edit.right), edit.caption, description, turns)
    raise SceneLayoutError(f"no contrast pair found in {params.image_size} px after {SCENE_ATTEMPTS} scenes")


def family_names() -> list[str]:
    return FAMILIES.names()
