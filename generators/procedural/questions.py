"""Facts read off scene graphs, each phrased as a question with its true answer and wrong alternatives.

A question is only made when its answer is unambiguous in the scene: a shape's colour is asked only when
that shape is unique, left/right only when the two boxes are separated horizontally, and so on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from generators.procedural.language import object_name, the, uniquely_named, with_article
from generators.procedural.scene import (
    Scene,
    SceneObject,
    count_where,
    dominant_relation,
    horizontal_relation,
    image_side,
    vertical_relation,
)
from generators.procedural.templates import OPPOSITE_RELATION, QUESTION_TEMPLATES, RELATION_PHRASES
from generators.procedural.vocabulary import (
    BACKGROUND_COLORS,
    BACKGROUND_PATTERNS,
    DIFFERENCE_KINDS,
    MAX_COUNT_ANSWER,
    OBJECT_COLORS,
    PATTERN_ANSWERS,
    SHAPE_PLURALS,
    SHAPES,
    SIGN_KINDS,
    SIGN_WORDS,
)

YES, NO = "yes", "no"
SIDES = ("left", "right")


@dataclass(frozen=True)
class Fact:
    question_type: str
    subject: str  # what the question is about: a shape, a colour, "red circle|blue star", a board kind ...
    question: str  # without any answer-format instruction
    answer: str
    distractors: tuple[str, ...] = ()  # wrong answers from the same closed vocabulary, for multiple choice
    image_side: str = ""  # contrast questions about one panel: "left" or "right"
    claim: str = ""  # what a yes/no question asserts about the subject: a colour, a relation, a word

    @property
    def is_yes_no(self) -> bool:
        return self.answer in (YES, NO)


def ask(rng: random.Random, question_type: str, **fields: str) -> str:
    return rng.choice(QUESTION_TEMPLATES[question_type]).format(**fields)


def others(vocabulary: tuple[str, ...] | list[str], answer: str) -> tuple[str, ...]:
    return tuple(v for v in vocabulary if v != answer)


COUNT_ANSWERS = tuple(str(n) for n in range(MAX_COUNT_ANSWER + 1))


def distinct(values: list[str]) -> list[str]:
    """Unique values in order of first appearance (never set order, which is not reproducible)."""
    return list(dict.fromkeys(values))


def unique_values(values: list[str]) -> list[str]:
    return [v for v in distinct(values) if values.count(v) == 1]


def named_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject]]:
    named = uniquely_named(scene)
    return [(a, b) for i, a in enumerate(named) for b in named[i + 1:]]


def oriented(rng: random.Random, pair: tuple[SceneObject, SceneObject]) -> tuple[SceneObject, SceneObject]:
    """The pair in a random order, so "a" is not always the earlier object."""
    return pair if rng.random() < 0.5 else (pair[1], pair[0])


# --- single-scene facts ------------------------------------------------------------------------------------

def color_of_shape(rng: random.Random, scene: Scene) -> list[Fact]:
    shapes = [o.shape for o in scene.shapes]
    facts = []
    for shape in unique_values(shapes):
        color = scene.shapes[shapes.index(shape)].color
        facts.append(Fact("color_of_shape", shape, ask(rng, "color_of_shape", shape=shape), color,
                          others(list(OBJECT_COLORS), color)))
    return facts


def shape_of_color(rng: random.Random, scene: Scene) -> list[Fact]:
    colors = [o.color for o in scene.shapes]
    facts = []
    for color in unique_values(colors):
        shape = scene.shapes[colors.index(color)].shape
        facts.append(Fact("shape_of_color", color, ask(rng, "shape_of_color", color=color), shape,
                          others(SHAPES, shape)))
    return facts


def with_one_absent(rng: random.Random, present: list[str], vocabulary: tuple[str, ...]) -> list[str]:
    absent = [v for v in vocabulary if v not in present]
    return present + ([rng.choice(absent)] if absent else [])


def count_shape(rng: random.Random, scene: Scene) -> list[Fact]:
    facts = []
    for shape in with_one_absent(rng, distinct([o.shape for o in scene.shapes]), SHAPES):
        answer = str(count_where(scene, shape=shape))
        facts.append(Fact("count_shape", shape, ask(rng, "count_shape", shapes=SHAPE_PLURALS[shape]), answer,
                          others(COUNT_ANSWERS, answer)))
    return facts


def count_color(rng: random.Random, scene: Scene) -> list[Fact]:
    facts = []
    for color in with_one_absent(rng, distinct([o.color for o in scene.shapes]), tuple(OBJECT_COLORS)):
        answer = str(count_where(scene, color=color))
        facts.append(Fact("count_color", color, ask(rng, "count_color", color=color), answer,
                          others(COUNT_ANSWERS, answer)))
    return facts


def count_total(rng: random.Random, scene: Scene) -> list[Fact]:
    answer = str(len(scene.shapes))
    return [Fact("count_total", "shape", ask(rng, "count_total"), answer, others(COUNT_ANSWERS, answer))]


def separated_pairs(rng: random.Random, scene: Scene, question_type: str,
                    relation_of: Callable[[SceneObject, SceneObject], str]) -> list[Fact]:
    """Named pairs whose boxes are separated along one axis, asked which way."""
    facts = []
    for a, b in (oriented(rng, pair) for pair in named_pairs(scene)):
        relation = relation_of(a, b)
        if relation:
            facts.append(Fact(question_type, f"{object_name(a)}|{object_name(b)}",
                              ask(rng, question_type, a=the(a), b=the(b)), relation))
    return facts


def relation_horizontal(rng: random.Random, scene: Scene) -> list[Fact]:
    return separated_pairs(rng, scene, "relation_horizontal", horizontal_relation)


def relation_vertical(rng: random.Random, scene: Scene) -> list[Fact]:
    return separated_pairs(rng, scene, "relation_vertical", vertical_relation)


def larger(rng: random.Random, scene: Scene) -> list[Fact]:
    """Only same-shape pairs of different size classes: across shapes, "larger" would depend on area."""
    facts = []
    for a, b in (oriented(rng, pair) for pair in named_pairs(scene)):
        if a.shape == b.shape and a.radius != b.radius:
            bigger, smaller = (a, b) if a.radius > b.radius else (b, a)
            facts.append(Fact("larger", f"{object_name(a)}|{object_name(b)}", ask(rng, "larger", a=the(a), b=the(b)),
                              object_name(bigger), (object_name(smaller),)))
    return facts


def side_of_image(rng: random.Random, scene: Scene) -> list[Fact]:
    facts = []
    for obj in uniquely_named(scene):
        side = image_side(obj, scene.width, scene.height)
        if side:
            facts.append(Fact("side_of_image", object_name(obj), ask(rng, "side_of_image", a=the(obj)), side))
    return facts


def sign_text(rng: random.Random, scene: Scene) -> list[Fact]:
    return [Fact("sign_text", b.kind, ask(rng, "sign_text", kind=b.kind), b.text, others(SIGN_WORDS, b.text))
            for b in scene.boards]


def sign_kind(rng: random.Random, scene: Scene) -> list[Fact]:
    return [Fact("sign_kind", b.text, ask(rng, "sign_kind", text=b.text), b.kind, others(SIGN_KINDS, b.kind))
            for b in scene.boards]


def background_pattern(rng: random.Random, scene: Scene) -> list[Fact]:
    answer = BACKGROUND_PATTERNS[scene.background.style]
    return [Fact("background_pattern", "background", ask(rng, "background_pattern"), answer,
                 others(PATTERN_ANSWERS, answer))]


def background_color(rng: random.Random, scene: Scene) -> list[Fact]:
    if scene.background.style != "solid":
        return []
    answer = scene.background.color_names[0]
    return [Fact("background_color", "background", ask(rng, "background_color"), answer,
                 others(list(BACKGROUND_COLORS), answer))]


def exists(rng: random.Random, scene: Scene) -> list[Fact]:
    """One present and one absent colour-shape combination, so picking one at random balances yes and no."""
    present = distinct([object_name(o) for o in scene.shapes])
    absent = [f"{c} {s}" for c in OBJECT_COLORS for s in SHAPES if f"{c} {s}" not in present]
    facts = []
    for name, answer in ((rng.choice(present), YES), (rng.choice(absent), NO)):
        facts.append(Fact("exists", name, ask(rng, "exists", thing=with_article(name)), answer, claim=name))
    return facts


def relation_check(rng: random.Random, scene: Scene) -> list[Fact]:
    """Each named pair asked once with its true relation and once with the opposite one."""
    facts = []
    for a, b in (oriented(rng, pair) for pair in named_pairs(scene)):
        relation = dominant_relation(a, b)
        for asked, answer in ((relation, YES), (OPPOSITE_RELATION[relation], NO)):
            facts.append(Fact("relation_check", f"{object_name(a)}|{object_name(b)}",
                              ask(rng, "relation_check", a=the(a), relation=RELATION_PHRASES[asked], b=the(b)),
                              answer, claim=asked))
    return facts


def color_check(rng: random.Random, scene: Scene) -> list[Fact]:
    facts = []
    for fact in color_of_shape(rng, scene):
        wrong = rng.choice(fact.distractors)
        for color, answer in ((fact.answer, YES), (wrong, NO)):
            facts.append(Fact("color_check", fact.subject, ask(rng, "color_check", shape=fact.subject, color=color),
                              answer, claim=color))
    return facts


def text_check(rng: random.Random, scene: Scene) -> list[Fact]:
    facts = []
    for board in scene.boards:
        wrong = rng.choice(others(SIGN_WORDS, board.text))
        for text, answer in ((board.text, YES), (wrong, NO)):
            facts.append(Fact("text_check", board.kind, ask(rng, "text_check", kind=board.kind, text=text), answer,
                              claim=text))
    return facts


FactMaker = Callable[[random.Random, Scene], list[Fact]]
SCENE_FACTS: dict[str, FactMaker] = {
    maker.__name__: maker
    for maker in (color_of_shape, shape_of_color, count_shape, count_color, count_total, relation_horizontal,
                  relation_vertical, larger, side_of_image, sign_text, sign_kind, background_pattern,
                  background_color, exists, relation_check, color_check, text_check)
}


def facts_by_type(rng: random.Random, scene: Scene, question_types: tuple[str, ...]) -> dict[str, list[Fact]]:
    return {t: SCENE_FACTS[t](rng, scene) for t in question_types}


def select_facts(rng: random.Random, candidates: dict[str, list[Fact]], count: int) -> list[Fact]:
    """Up to ``count`` facts, one question type at a time in random order, so a conversation mixes types."""
    pools = {t: list(facts) for t, facts in candidates.items() if facts}
    order = list(pools)
    rng.shuffle(order)
    chosen: list[Fact] = []
    asked_subjects: set[tuple[str, str]] = set()
    while len(chosen) < count and any(pools.values()):
        for question_type in order:
            pool = pools[question_type]
            if not pool or len(chosen) == count:
                continue
            fact = pool.pop(rng.randrange(len(pool)))
            # The yes and no variants of one check share a subject; asking both would give one away.
            if (question_type, fact.subject) not in asked_subjects:
                asked_subjects.add((question_type, fact.subject))
                chosen.append(fact)
    return chosen


# --- contrast facts (left scene vs right scene) ------------------------------------------------------------

def panels(left: Scene, right: Scene) -> tuple[tuple[str, Scene], ...]:
    return (("left", left), ("right", right))


def difference_fact(rng: random.Random, kind: str) -> Fact:
    return Fact("difference_kind", kind, ask(rng, "difference_kind"), kind, others(DIFFERENCE_KINDS, kind))


def which_has(rng: random.Random, left: Scene, right: Scene, *, shape: str, color: str = "") -> Fact | None:
    """"Which image has a red star?" when exactly one panel does."""
    sides = [side for side, scene in panels(left, right) if count_where(scene, shape=shape, color=color)]
    if len(sides) != 1:
        return None
    name = f"{color} {shape}".strip()
    return Fact("contrast_which_has", name, ask(rng, "contrast_which_has", thing=with_article(name)), sides[0],
                claim=name)


def color_change_facts(rng: random.Random, left: Scene, right: Scene, shape: str) -> list[Fact]:
    facts = [difference_fact(rng, "colour")]
    for side, scene in panels(left, right):
        color = next(o.color for o in scene.shapes if o.shape == shape)
        facts.append(Fact("contrast_color", shape, ask(rng, "contrast_color", shape=shape, side=side), color,
                          image_side=side))
        facts.append(which_has(rng, left, right, shape=shape, color=color))
    return [f for f in facts if f is not None]


def count_change_facts(rng: random.Random, left: Scene, right: Scene, shape: str) -> list[Fact]:
    plural = SHAPE_PLURALS[shape]
    facts = [difference_fact(rng, "count")]
    counts = {side: count_where(scene, shape=shape) for side, scene in panels(left, right)}
    for side in SIDES:
        facts.append(Fact("contrast_count", shape, ask(rng, "contrast_count", shapes=plural, side=side),
                          str(counts[side]), image_side=side))
    more = "left" if counts["left"] > counts["right"] else "right"
    facts.append(Fact("contrast_more", shape, ask(rng, "contrast_more", shapes=plural), more))
    facts.append(Fact("contrast_fewer", shape, ask(rng, "contrast_fewer", shapes=plural), others(SIDES, more)[0]))
    return facts


def shape_change_facts(rng: random.Random, left: Scene, right: Scene, color: str) -> list[Fact]:
    facts = [difference_fact(rng, "shape")]
    for side, scene in panels(left, right):
        shape = next(o.shape for o in scene.shapes if o.color == color)
        facts.append(Fact("contrast_shape", color, ask(rng, "contrast_shape", color=color, side=side), shape,
                          image_side=side))
        facts.append(which_has(rng, left, right, shape=shape))
    return [f for f in facts if f is not None]


def placement_change_facts(rng: random.Random, left: Scene, right: Scene, mover: str, reference: str) -> list[Fact]:
    """Questions about an object that crossed from one side of a reference object to the other."""
    facts = [difference_fact(rng, "placement")]
    relations = {}
    for side, scene in panels(left, right):
        by_name = {object_name(o): o for o in uniquely_named(scene)}
        a, b = by_name[mover], by_name[reference]
        relations[side] = horizontal_relation(a, b)
        facts.append(Fact("contrast_relation", f"{mover}|{reference}",
                          ask(rng, "contrast_relation", side=side, a=the(a), b=the(b)), relations[side],
                          image_side=side))
    for side in SIDES:
        facts.append(Fact("contrast_which_relation", f"{mover}|{reference}",
                          ask(rng, "contrast_which_relation", a=f"the {mover}",
                              relation=RELATION_PHRASES[relations[side]], b=f"the {reference}"), side,
                          claim=relations[side]))
    return facts
