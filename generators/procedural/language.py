"""Captions (at most 12 words) and descriptions (30-90 words) written from a scene graph.

Every statement is read off the graph, and spatial words come from the relations in ``scene``.
"""

from __future__ import annotations

from generators.procedural.scene import Background, Scene, SceneObject, dominant_relation, region
from generators.procedural.templates import (
    BACKGROUND_PHRASES,
    BOARD_FILLER,
    CAPTION_TEMPLATES,
    DESCRIPTION_TEMPLATES,
    DIFFERENCE_PHRASES,
    GENERAL_FILLERS,
    PLACE_PHRASES,
    RELATION_PHRASES,
    SHAPE_FILLERS,
)
from generators.procedural.vocabulary import COUNT_WORDS, SHAPE_PLURALS

MAX_CAPTION_WORDS = 12
MIN_DESCRIPTION_WORDS = 30
MAX_DESCRIPTION_WORDS = 90
MAX_RELATION_SENTENCES = 3


def word_count(text: str) -> int:
    return len(text.split())


def capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def with_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def count_phrase(count: int, noun: str, color: str = "") -> str:
    """"one circle", "three red circles", "two shapes"."""
    plural = noun if count == 1 else SHAPE_PLURALS.get(noun, noun + "s")
    return " ".join(w for w in (COUNT_WORDS[count], color, plural) if w)


def join_items(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def object_name(obj: SceneObject, with_size: bool = False) -> str:
    """"red circle", "large red circle", "white poster"."""
    if not obj.is_shape:
        return f"{obj.color} {obj.kind}"
    return f"{obj.size} {obj.color} {obj.shape}" if with_size else f"{obj.color} {obj.shape}"


def the(obj: SceneObject) -> str:
    return "the " + object_name(obj)


def place_phrase(obj: SceneObject, scene: Scene) -> str:
    row, column = region(obj, scene.width, scene.height)
    return PLACE_PHRASES[f"{row} {column}"]


def background_phrase(background: Background) -> str:
    return BACKGROUND_PHRASES[background.style].format(*background.color_names)


def shape_groups(scene: Scene, numbered: bool) -> list[str]:
    """Shapes grouped by colour and shape in order of appearance: "two red circles", "a blue star"."""
    counts: dict[tuple[str, str], int] = {}
    for obj in scene.shapes:
        counts[(obj.color, obj.shape)] = counts.get((obj.color, obj.shape), 0) + 1
    items = []
    for (color, shape), count in counts.items():
        numbered_item = numbered or count > 1
        items.append(count_phrase(count, shape, color) if numbered_item else with_article(f"{color} {shape}"))
    return items


def first_fitting(candidates: list[str], max_words: int = MAX_CAPTION_WORDS) -> str:
    """The first candidate within the word limit; the last one must always fit."""
    for candidate in candidates:
        if word_count(candidate) <= max_words:
            return candidate
    raise ValueError(f"no caption within {max_words} words among {candidates}")


# --- captions ----------------------------------------------------------------------------------------------

def listing_caption(scene: Scene, numbered: bool) -> str:
    """ "Two red circles and a blue star on a plain grey background." (the background only when it fits)."""
    items = capitalized(join_items(shape_groups(scene, numbered)))
    return first_fitting([
        CAPTION_TEMPLATES["listing_on_background"].format(items=items, background=background_phrase(scene.background)),
        CAPTION_TEMPLATES["listing"].format(items=items),
    ])


def relation_caption(a: SceneObject, b: SceneObject) -> str:
    """ "A green square to the left of a yellow triangle." """
    relation = RELATION_PHRASES[dominant_relation(a, b)]
    return capitalized(CAPTION_TEMPLATES["relation"].format(
        a=with_article(object_name(a)), relation=relation, b=with_article(object_name(b))))


def board_caption(scene: Scene) -> str:
    """'A white poster that reads "OPEN" above a red circle.'"""
    board = scene.boards[0]
    article_board = capitalized(with_article(object_name(board)))
    shapes = scene.shapes
    candidates = []
    if len(shapes) == 1:
        relation = RELATION_PHRASES[dominant_relation(board, shapes[0])]
        candidates.append(CAPTION_TEMPLATES["board_and_shape"].format(
            board=article_board, text=board.text, relation=relation, shape=with_article(object_name(shapes[0]))))
    elif shapes:
        candidates.append(CAPTION_TEMPLATES["board_and_shapes"].format(
            board=article_board, text=board.text, count=COUNT_WORDS[len(shapes)]))
    candidates.append(CAPTION_TEMPLATES["board"].format(board=article_board, text=board.text))
    return first_fitting(candidates)


def overview_caption(scene: Scene) -> str:
    """A caption for instruction samples: the listing when it fits, else the number of shapes."""
    count = capitalized(COUNT_WORDS[len(scene.shapes)])
    background = background_phrase(scene.background)
    if scene.boards:
        board = with_article(object_name(scene.boards[0]))
        candidates = [CAPTION_TEMPLATES["overview_with_board"].format(count=count, board=board, background=background),
                      CAPTION_TEMPLATES["overview_with_board_short"].format(count=count, board=board)]
    else:
        items = capitalized(join_items(shape_groups(scene, numbered=False)))
        candidates = [CAPTION_TEMPLATES["listing_on_background"].format(items=items, background=background),
                      CAPTION_TEMPLATES["listing"].format(items=items),
                      CAPTION_TEMPLATES["overview"].format(count=count, background=background)]
    candidates.append(CAPTION_TEMPLATES["overview_short"].format(count=count))
    return first_fitting(candidates)


# --- descriptions ------------------------------------------------------------------------------------------

def things_phrase(scene: Scene) -> str:
    parts = [count_phrase(len(scene.shapes), "shape")] if scene.shapes else []
    parts += [with_article(board.kind) for board in scene.boards]
    return join_items(parts)


def object_sentence(obj: SceneObject, scene: Scene) -> str:
    place = place_phrase(obj, scene)
    if obj.is_shape:
        return DESCRIPTION_TEMPLATES["shape"].format(shape=capitalized(with_article(object_name(obj, True))),
                                                     place=place)
    return DESCRIPTION_TEMPLATES["board"].format(board=capitalized(with_article(object_name(obj))), place=place,
                                                 text=obj.text)


def uniquely_named(scene: Scene) -> list[SceneObject]:
    """Shapes that "the <colour> <shape>" picks out unambiguously."""
    names = [object_name(o) for o in scene.shapes]
    return [o for o, name in zip(scene.shapes, names, strict=True) if names.count(name) == 1]


def relation_sentences(scene: Scene) -> list[str]:
    named = uniquely_named(scene)
    sentences = []
    for index, a in enumerate(named):
        for b in named[index + 1:]:
            relation = RELATION_PHRASES[dominant_relation(a, b)]
            sentences.append(capitalized(DESCRIPTION_TEMPLATES["relation"].format(a=the(a), relation=relation,
                                                                                  b=the(b))))
    return sentences


def fillers_for(scene: Scene) -> list[str]:
    shape_fillers = list(SHAPE_FILLERS) if scene.shapes else []
    board_fillers = [BOARD_FILLER.format(kind=board.kind) for board in scene.boards]
    return [*shape_fillers, *board_fillers, *GENERAL_FILLERS]


def fitted_description(sentences: list[str], optional: list[str], fillers: list[str]) -> str:
    """``sentences`` plus as many ``optional`` ones as stay within the maximum, padded to the minimum."""
    chosen = list(sentences)
    for sentence in optional:
        if word_count(" ".join([*chosen, sentence])) <= MAX_DESCRIPTION_WORDS:
            chosen.append(sentence)
    for filler in fillers:
        if word_count(" ".join(chosen)) >= MIN_DESCRIPTION_WORDS:
            break
        chosen.append(filler)
    return " ".join(chosen)


def describe_scene(scene: Scene) -> str:
    intro = DESCRIPTION_TEMPLATES["intro"].format(things=things_phrase(scene),
                                                  background=background_phrase(scene.background))
    objects = [object_sentence(o, scene) for o in scene.objects]
    return fitted_description([intro, *objects], relation_sentences(scene)[:MAX_RELATION_SENTENCES], fillers_for(scene))


# --- contrast pairs ----------------------------------------------------------------------------------------

def contrast_caption(kind: str, left: str, right: str) -> str:
    """Caption of a pair from what differs: two object phrases, two count phrases, or mover and reference."""
    return capitalized(CAPTION_TEMPLATES[f"contrast_{kind}"].format(a=left, b=right))


def describe_contrast(left: Scene, difference: str, change: str) -> str:
    """The left panel in full, then the one change that makes the right panel."""
    intro = DESCRIPTION_TEMPLATES["contrast_intro"].format(difference=difference)
    items = join_items([with_article(object_name(o)) + " " + place_phrase(o, left) for o in left.shapes])
    panel = DESCRIPTION_TEMPLATES["contrast_left"].format(items=items, background=background_phrase(left.background))
    return fitted_description([intro, panel, change], [], fillers_for(left))


def difference_phrase(kind: str, **names: str) -> str:
    return DIFFERENCE_PHRASES[kind].format(**names)


def change_sentence(kind: str, **names: str) -> str:
    return DESCRIPTION_TEMPLATES[f"contrast_{kind}"].format(**names)
