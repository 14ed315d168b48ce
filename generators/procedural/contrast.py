"""Contrast pairs: edits that turn a scene into its twin differing in exactly one attribute.

Each edit also returns the questions, caption and description sentence about the one thing it changed, all
read off the two scenes after the edit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from generators.procedural import language
from generators.procedural.questions import (
    Fact,
    color_change_facts,
    count_change_facts,
    placement_change_facts,
    shape_change_facts,
)
from generators.procedural.sampling import (
    ObjectSpec,
    recolored,
    reshaped,
    with_added_shape,
    with_moved_object,
    without_object,
)
from generators.procedural.scene import Scene, horizontal_relation
from generators.procedural.templates import RELATION_PHRASES
from generators.procedural.vocabulary import COUNT_WORDS, OBJECT_COLORS, SHAPE_PLURALS, SHAPES

MAX_SAME_SHAPE = 3  # a count edit removes rather than adds once a shape is this frequent


@dataclass(frozen=True)
class ContrastEdit:
    right: Scene
    facts: list[Fact]
    caption: str
    difference: str  # "the colour of the star"
    change: str  # the sentence that turns the left panel's description into the right one


def shape_indices(scene: Scene) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if o.is_shape]


def unique_attribute_indices(scene: Scene, attribute: str) -> list[int]:
    values = [getattr(o, attribute) for o in scene.objects if o.is_shape]
    return [i for i in shape_indices(scene) if values.count(getattr(scene.objects[i], attribute)) == 1]


def change_color(rng: random.Random, left: Scene) -> ContrastEdit | None:
    """A uniquely shaped object takes a colour no shape in the scene has."""
    indices = unique_attribute_indices(left, "shape")
    unused = [c for c in OBJECT_COLORS if c not in {o.color for o in left.shapes}]
    if not indices or not unused:
        return None
    index = rng.choice(indices)
    old, shape, new = left.objects[index].color, left.objects[index].shape, rng.choice(unused)
    right = recolored(left, index, new)
    return ContrastEdit(right, color_change_facts(rng, left, right, shape),
                        language.contrast_caption("colour", language.with_article(f"{old} {shape}"),
                                                  language.with_article(f"{new} {shape}")),
                        language.difference_phrase("colour", shape=shape),
                        language.change_sentence("colour", shape=shape, new=new, old=old))


def change_count(rng: random.Random, left: Scene) -> ContrastEdit | None:
    """One more or one fewer of a shape (never none left)."""
    shape = rng.choice([o.shape for o in left.shapes])
    members = [i for i in shape_indices(left) if left.objects[i].shape == shape]
    old = len(members)
    right: Scene | None
    if old > 1 and (old >= MAX_SAME_SHAPE or rng.random() < 0.5):
        right = without_object(left, members[-1])
    else:
        prototype = left.objects[members[0]]
        spec = ObjectSpec(shape=shape, color=prototype.color, size=prototype.size)
        right = with_added_shape(rng, left, spec)
    if right is None:
        return None
    new = len([o for o in right.shapes if o.shape == shape])
    return ContrastEdit(right, count_change_facts(rng, left, right, shape),
                        language.contrast_caption("count", language.count_phrase(old, shape),
                                                  language.count_phrase(new, shape)),
                        language.difference_phrase("count", shapes=SHAPE_PLURALS[shape]),
                        language.change_sentence("count", new=language.count_phrase(new, shape),
                                                 old=COUNT_WORDS[old]))


def change_shape(rng: random.Random, left: Scene) -> ContrastEdit | None:
    """An object unique in colour and shape turns into a shape the scene does not have."""
    unique_colors = set(unique_attribute_indices(left, "color"))
    indices = [i for i in unique_attribute_indices(left, "shape") if i in unique_colors]
    unused = [s for s in SHAPES if s not in {o.shape for o in left.shapes}]
    if not indices or not unused:
        return None
    index = rng.choice(indices)
    color, old, new = left.objects[index].color, left.objects[index].shape, rng.choice(unused)
    right = reshaped(left, index, new)
    return ContrastEdit(right, shape_change_facts(rng, left, right, color),
                        language.contrast_caption("shape", language.with_article(f"{color} {old}"),
                                                  language.with_article(f"{color} {new}")),
                        language.difference_phrase("shape", color=color),
                        language.change_sentence("shape", color=color, new=language.with_article(new),
                                                 old=language.with_article(old)))


def change_placement(rng: random.Random, left: Scene) -> ContrastEdit | None:
    """A named object moves to the other side of another named object."""
    named = language.uniquely_named(left)
    pairs = [(a, b) for a in named for b in named if a is not b and horizontal_relation(a, b)]
    rng.shuffle(pairs)
    for mover, reference in pairs:
        if horizontal_relation(mover, reference) == "left":
            columns = (reference.box.x1 + 1, left.width - 1)
        else:
            columns = (0, reference.box.x0 - 1)
        right = with_moved_object(rng, left, left.objects.index(mover), columns)
        if right is None:
            continue
        moved = next(o for o in right.objects if language.object_name(o) == language.object_name(mover))
        facts = placement_change_facts(rng, left, right, language.object_name(mover), language.object_name(reference))
        return ContrastEdit(right, facts,
                            language.contrast_caption("placement", language.the(mover), language.the(reference)),
                            language.difference_phrase("placement", a=language.the(mover)),
                            language.change_sentence("placement", a=language.the(mover),
                                                     relation=RELATION_PHRASES[horizontal_relation(moved, reference)],
                                                     b=language.the(reference)))
    return None


CONTRAST_EDITS: dict[str, Callable[[random.Random, Scene], ContrastEdit | None]] = {
    "colour": change_color, "count": change_count, "shape": change_shape, "placement": change_placement,
}
