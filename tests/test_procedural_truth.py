"""Scene-graph truth: every caption, description sentence and answer re-derived by an independent oracle,
and colours and counts re-checked against the rendered pixels.

The oracle below parses the generated text with its own regular expressions and recomputes each answer
from the scene graph stored in the sample's metadata; it never calls the generator's answer functions.
"""

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

from generators.procedural import ProceduralParams, generate_sample, vocabulary

FAMILIES = ("SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthMultiChoice", "SynthConvShort",
            "SynthContrastShort")
INSTRUCTION_FAMILIES = ("SynthMultiChoice", "SynthConvShort", "SynthContrastShort")
SEEDS = range(50)
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
PATTERN_OF_STYLE = {"solid": "plain", "vertical_gradient": "gradient", "horizontal_gradient": "gradient",
                    "stripes": "striped", "checker": "checkered", "speckle": "speckled"}
RELATIONS = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_INSTRUCTION = "Answer the question using a single word or phrase."
MIN_COMPONENT_AREA = 5  # px; every object is at least 7 px across, so real components are far larger


class OracleError(AssertionError):
    pass


# --- scene-graph reading (from the metadata JSON) ----------------------------------------------------------

def shapes_of(scene):
    return [o for o in scene["objects"] if o["kind"] == "shape"]


def boards_of(scene):
    return [o for o in scene["objects"] if o["kind"] != "shape"]


def the_one(objects, what):
    if len(objects) != 1:
        raise OracleError(f"{what} matches {len(objects)} objects; the question is ambiguous")
    return objects[0]


def named(scene, name):
    color, shape = name.split()
    return the_one([o for o in shapes_of(scene) if o["color"] == color and o["shape"] == shape], name)


def singular(plural):
    assert plural.endswith("s"), plural
    return plural[:-1]


def relation_holds(a, b, relation):
    """Bounding boxes [x0, y0, x1, y1] strictly separated in the stated direction."""
    if relation == "left":
        return a["box"][2] < b["box"][0]
    if relation == "right":
        return b["box"][2] < a["box"][0]
    if relation == "above":
        return a["box"][3] < b["box"][1]
    return b["box"][3] < a["box"][1]


def strict_relation(a, b, axis):
    first, second = ("left", "right") if axis == "horizontal" else ("above", "below")
    if relation_holds(a, b, first):
        return first
    if relation_holds(a, b, second):
        return second
    raise OracleError(f"{a['color']} {a['shape']} and {b['color']} {b['shape']} are not separated {axis}ly")


def yes_no(statement_true, negation_true):
    if statement_true:
        return "yes"
    if negation_true:
        return "no"
    raise OracleError("neither the statement nor its opposite holds")


def count(scene, shape=None, color=None):
    return sum(1 for o in shapes_of(scene) if (shape is None or o["shape"] == shape)
               and (color is None or o["color"] == color))


def region_of(obj, scene):
    column = ("left", "centre", "right")[min(2, obj["x"] * 3 // scene["width"])]
    row = ("top", "middle", "bottom")[min(2, obj["y"] * 3 // scene["height"])]
    return row, column


PLACES = {"at the top left": ("top", "left"), "at the top": ("top", "centre"), "at the top right": ("top", "right"),
          "on the left": ("middle", "left"), "in the centre": ("middle", "centre"), "on the right": ("middle", "right"),
          "at the bottom left": ("bottom", "left"), "at the bottom": ("bottom", "centre"),
          "at the bottom right": ("bottom", "right")}


def background_matches(phrase, background):
    """The background phrase names the style and colours of the scene's background."""
    names = background["color_names"]
    expected = {
        "solid": f"a plain {names[0]} background",
        "vertical_gradient": f"a {names[0]} to {names[1]} gradient background",
        "horizontal_gradient": f"a {names[0]} to {names[1]} gradient background",
        "stripes": f"a background of {names[0]} and {names[1]} stripes",
        "checker": f"a {names[0]} and {names[1]} checkered background",
        "speckle": f"a speckled {names[0]} background",
    }[background["style"]]
    return phrase == expected


# --- the question oracle -----------------------------------------------------------------------------------

def single_scene_answer(question, scene):
    """The true answer to ``question`` about one scene, recomputed from the graph."""
    def match(*patterns):
        for pattern in patterns:
            found = re.fullmatch(pattern, question)
            if found:
                return found.groups()
        return None

    if match(r"What colour is the background\?") is not None:
        if scene["background"]["style"] != "solid":
            raise OracleError("the background has more than one colour")
        return scene["background"]["color_names"][0]
    if (m := match(r"What colour is the (\w+)\?", r"What is the colour of the (\w+)\?")) is not None:
        return the_one([o for o in shapes_of(scene) if o["shape"] == m[0]], m[0])["color"]
    if (m := match(r"What shape is the (\w+) object\?", r"Which shape is (\w+)\?")) is not None:
        return the_one([o for o in shapes_of(scene) if o["color"] == m[0]], m[0])["shape"]
    if match(r"How many shapes are there in total\?", r"How many shapes does the image contain\?") is not None:
        return str(len(shapes_of(scene)))
    if (m := match(r"How many (\w+) shapes are there\?", r"How many shapes are (\w+)\?")) is not None:
        return str(count(scene, color=m[0]))
    if (m := match(r"How many (\w+) are there\?", r"How many (\w+) are in the image\?")) is not None:
        return str(count(scene, shape=singular(m[0])))
    if (m := match(r"Is the (\w+ \w+) to the left or to the right of the (\w+ \w+)\?",
                   r"Is the (\w+ \w+) left or right of the (\w+ \w+)\?")) is not None:
        return strict_relation(named(scene, m[0]), named(scene, m[1]), "horizontal")
    if (m := match(r"Is the (\w+ \w+) above or below the (\w+ \w+)\?")) is not None:
        return strict_relation(named(scene, m[0]), named(scene, m[1]), "vertical")
    if (m := match(r"Which is larger, the (\w+ \w+) or the (\w+ \w+)\?",
                   r"Which is bigger: the (\w+ \w+) or the (\w+ \w+)\?")) is not None:
        a, b = named(scene, m[0]), named(scene, m[1])
        if a["shape"] != b["shape"] or a["radius"] == b["radius"]:
            raise OracleError(f"sizes of {m[0]} and {m[1]} are not comparable")
        return m[0] if a["radius"] > b["radius"] else m[1]
    if (m := match(r"Is the (\w+ \w+) on the left or the right side of the image\?",
                   r"On which side of the image is the (\w+ \w+)\?")) is not None:
        column = region_of(named(scene, m[0]), scene)[1]
        if column == "centre":
            raise OracleError(f"{m[0]} is in the middle third")
        return column
    if (m := match(r"What does the (\w+) say\?", r"What word is written on the (\w+)\?")) is not None:
        return the_one([o for o in boards_of(scene) if o["kind"] == m[0]], m[0])["text"]
    if (m := match(r'What kind of display shows the word "(\w+)"\?', r'What is the word "(\w+)" written on\?')):
        return the_one([o for o in boards_of(scene) if o["text"] == m[0]], m[0])["kind"]
    if match(r"What pattern does the background have\?", r"What kind of background does the image have\?") is not None:
        return PATTERN_OF_STYLE[scene["background"]["style"]]
    if (m := match(r"Is there an? (\w+) (\w+) in the image\?", r"Does the image contain an? (\w+) (\w+)\?")):
        present = count(scene, shape=m[1], color=m[0]) > 0
        return yes_no(present, not present)
    if (m := match(r"Is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?")) is not None:
        a, b, relation = named(scene, m[0]), named(scene, m[2]), RELATIONS[m[1]]
        return yes_no(relation_holds(a, b, relation), relation_holds(a, b, OPPOSITE[relation]))
    if (m := match(r"Is the (\w+) (\w+)\?")) is not None:
        obj = the_one([o for o in shapes_of(scene) if o["shape"] == m[0]], m[0])
        return yes_no(obj["color"] == m[1], obj["color"] != m[1])
    if (m := match(r'Does the (\w+) read "(\w+)"\?')) is not None:
        board = the_one([o for o in boards_of(scene) if o["kind"] == m[0]], m[0])
        return yes_no(board["text"] == m[1], board["text"] != m[1])
    raise OracleError(f"no oracle rule understands {question!r}")


def contrast_difference(left, right):
    """What differs between the panels, checking that it is exactly one attribute of one object."""
    assert left["background"] == right["background"]
    a, b = left["objects"], right["objects"]
    if len(a) != len(b):
        longer, shorter = (a, b) if len(a) > len(b) else (b, a)
        extra = [o for o in longer if o not in shorter]
        assert len(extra) == 1 and all(o in longer for o in shorter), "count change must add or remove one object"
        return "count"
    changed = [(x, y) for x, y in zip(a, b) if x != y]
    assert len(changed) == 1, f"{len(changed)} objects differ"
    x, y = changed[0]
    differing = {k for k in x if x[k] != y[k]}
    if differing == {"color", "rgb"}:
        return "colour"
    if differing == {"shape"}:
        return "shape"
    if "box" in differing and differing <= {"x", "y", "box"}:
        return "placement"
    raise AssertionError(f"the changed object differs in {sorted(differing)}")


def contrast_answer(question, left, right):
    panels = {"left": left, "right": right}

    def match(pattern):
        found = re.fullmatch(pattern, question)
        return found.groups() if found else None

    def the_side(sides):
        if len(sides) != 1:
            raise OracleError(f"{len(sides)} panels fit {question!r}")
        return sides[0]

    if question in ("What is different between the left and right images?",
                    "What changes from the left image to the right image?"):
        return contrast_difference(left, right)
    if (m := match(r"What colour is the (\w+) in the (left|right) image\?")) is not None:
        return the_one([o for o in shapes_of(panels[m[1]]) if o["shape"] == m[0]], m[0])["color"]
    if (m := match(r"Which image (?:has|contains) an? (\w+(?: \w+)?)\?")) is not None:
        words = m[0].split()
        color, shape = (words[0], words[1]) if len(words) == 2 else (None, words[0])
        return the_side([side for side, scene in panels.items() if count(scene, shape=shape, color=color)])
    if (m := match(r"How many (\w+) are in the (left|right) image\?")) is not None:
        return str(count(panels[m[1]], shape=singular(m[0])))
    if (m := match(r"Which image has (more|fewer) (\w+)\?")) is not None:
        counts = {side: count(scene, shape=singular(m[1])) for side, scene in panels.items()}
        if counts["left"] == counts["right"]:
            raise OracleError("both panels have the same count")
        more = "left" if counts["left"] > counts["right"] else "right"
        return more if m[0] == "more" else OPPOSITE[more]
    if (m := match(r"What shape is the (\w+) object in the (left|right) image\?")) is not None:
        return the_one([o for o in shapes_of(panels[m[1]]) if o["color"] == m[0]], m[0])["shape"]
    if (m := match(r"In the (left|right) image, is the (\w+ \w+) to the left or to the right of the (\w+ \w+)\?")):
        scene = panels[m[0]]
        return strict_relation(named(scene, m[1]), named(scene, m[2]), "horizontal")
    if (m := match(r"In which image is the (\w+ \w+) (to the left of|to the right of) the (\w+ \w+)\?")) is not None:
        relation = RELATIONS[m[1]]
        return the_side([side for side, scene in panels.items()
                         if relation_holds(named(scene, m[0]), named(scene, m[2]), relation)])
    raise OracleError(f"no oracle rule understands {question!r}")


def split_question(human):
    """(question, {letter: option}) with the image token, options and instruction removed."""
    text = human.removeprefix("<image>\n")
    lines = text.split("\n")
    options = {}
    if lines[-1] == MC_INSTRUCTION:
        option_lines = [line for line in lines[1:-1]]
        for line in option_lines:
            letter, option = re.fullmatch(r"([A-D])\. (.+)", line).groups()
            options[letter] = option
        return lines[0], options
    assert lines[-1] == SHORT_INSTRUCTION and len(lines) == 2, text
    return lines[0], options


def check_conversation_truth(sample, scenes):
    turns = sample.conversations
    for human, gpt in zip(turns[0::2], turns[1::2]):
        question, options = split_question(human["value"])
        if len(scenes) == 2:
            truth = contrast_answer(question, *scenes)
        else:
            truth = single_scene_answer(question, scenes[0])
        if options:
            normalised = {letter: text.lower() if text in ("Yes", "No") else text for letter, text in options.items()}
            correct = [letter for letter, text in normalised.items() if text == truth]
            assert correct == [gpt["value"]], (question, options, gpt["value"], truth)
        else:
            assert gpt["value"] == truth, (question, gpt["value"], truth)


# --- caption and description oracle ------------------------------------------------------------------------

ITEM = re.compile(r"(a|an|one|two|three|four|five|six) (\w+) (\w+?)s?$")


def listed_counts(items_text):
    items = re.split(r", | and ", items_text)
    counts = Counter()
    for item in items:
        number, color, shape = ITEM.fullmatch(item.strip().lower()).groups()
        counts[(color, shape)] += NUMBER_WORDS[number]
    return counts


def check_caption_truth(family, caption, scene):
    shape_counts = Counter((o["color"], o["shape"]) for o in shapes_of(scene))
    if family in ("SynthColor", "SynthCount"):
        m = re.fullmatch(r"(.+?)(?: on (.+))?\.", caption)
        assert listed_counts(m[1]) == shape_counts, (caption, shape_counts)
        assert m[2] is None or background_matches(m[2], scene["background"]), caption
        if family == "SynthColor":
            assert len({c for c, _ in shape_counts}) <= 3
        else:
            per_type = Counter(shape for _, shape in shape_counts.elements())
            assert max(per_type.values()) <= 3 and sum(per_type.values()) <= 6, shape_counts
    elif family == "SynthSpatial":
        m = re.fullmatch(r"An? (\w+ \w+) (to the left of|to the right of|above|below) an? (\w+ \w+)\.", caption)
        assert relation_holds(named(scene, m[1]), named(scene, m[3]), RELATIONS[m[2]]), caption
    elif family == "SynthText":
        m = re.fullmatch(r'An? (\w+) (\w+) that reads "(\w+)"(?: (to the left of|to the right of|above|below) '
                         r'an? (\w+ \w+)| and (\w+) shapes)?\.', caption)
        board = the_one(boards_of(scene), "board")
        assert (board["color"], board["kind"], board["text"]) == (m[1], m[2], m[3]), caption
        if m[4]:
            assert relation_holds(board, named(scene, m[5]), RELATIONS[m[4]]), caption
        if m[6]:
            assert NUMBER_WORDS[m[6]] == len(shapes_of(scene)), caption


SHAPE_FILLERS = {"Every shape is flat and evenly coloured, with crisp edges.",
                 "The shapes have no outlines and cast no shadows."}
DIFFERENCES = {r"the colour of the (\w+)": "colour", r"the number of (\w+)": "count",
               r"the shape of the (\w+) object": "shape", r"the position of the (\w+ \w+)": "placement"}


def check_description_truth(description, scenes):
    """Every sentence is true of the scene (for contrast pairs: of the left panel, or of the change)."""
    scene = scenes[0]
    sentences = [s.strip() for s in re.findall(r"[^.]+\.", description)]
    for sentence in sentences:
        if sentence in SHAPE_FILLERS:
            assert shapes_of(scene), sentence
        elif sentence == "It is a simple, flat illustration seen straight on.":
            continue
        elif sentence == "Nothing else appears in the picture.":
            mentioned = [s for s in sentences if re.fullmatch(r"An? (small|medium|large) .+|An? .+ reads .+", s)]
            assert len(mentioned) == len(scene["objects"]) or len(scenes) == 2, sentence
        elif m := re.fullmatch(r"The (\w+) has dark letters on a light board\.", sentence):
            assert [b["kind"] for b in boards_of(scene)] == [m[1]], sentence
        elif m := re.fullmatch(r"An? (small|medium|large) (\w+) (\w+) is (.+)\.", sentence):
            assert any(o["size"] == m[1] and o["color"] == m[2] and o["shape"] == m[3]
                       and region_of(o, scene) == PLACES[m[4]] for o in shapes_of(scene)), sentence
        elif m := re.fullmatch(r'An? (\w+) (\w+) (.+) reads "(\w+)"\.', sentence):
            board = the_one(boards_of(scene), "board")
            assert (board["color"], board["kind"], board["text"]) == (m[1], m[2], m[4]), sentence
            assert region_of(board, scene) == PLACES[m[3]], sentence
        elif m := re.fullmatch(r"The (\w+ \w+) is (to the left of|to the right of|above|below) the (\w+ \w+)\.",
                               sentence):
            assert relation_holds(named(scene, m[1]), named(scene, m[3]), RELATIONS[m[2]]), sentence
        elif m := re.fullmatch(r"The image shows (.+?) on (.+)\.", sentence):
            assert background_matches(m[2], scene["background"]), sentence
            things = Counter()
            for part in re.split(r", | and ", m[1]):
                number, noun = part.split()
                things[noun.removesuffix("s")] += NUMBER_WORDS[number]
            assert things["shape"] == len(shapes_of(scene)), sentence
            assert all(things[b["kind"]] == 1 for b in boards_of(scene)), sentence
        elif m := re.fullmatch(r"The left panel shows (.+), against (.+)\.", sentence):
            assert background_matches(m[2], scene["background"]), sentence
            placed = re.findall(r"an? (\w+) (\w+) (at the top left|at the top right|at the top|on the left|"
                                r"in the centre|on the right|at the bottom left|at the bottom right|at the bottom)",
                                m[1])
            assert len(placed) == len(shapes_of(scene))
            for color, shape, place in placed:
                assert any(o["color"] == color and o["shape"] == shape and region_of(o, scene) == PLACES[place]
                           for o in shapes_of(scene)), sentence
        elif m := re.fullmatch(r"Two panels sit side by side, separated by a thin line, and differ only in (.+)\.",
                               sentence):
            kinds = [kind for pattern, kind in DIFFERENCES.items() if re.fullmatch(pattern, m[1])]
            assert kinds == [contrast_difference(*scenes)], sentence
        elif m := re.fullmatch(r"In the right panel the (\w+) is (\w+) instead of (\w+)\.", sentence):
            old = the_one([o for o in shapes_of(scenes[0]) if o["shape"] == m[1]], m[1])
            new = the_one([o for o in shapes_of(scenes[1]) if o["shape"] == m[1]], m[1])
            assert (new["color"], old["color"]) == (m[2], m[3]), sentence
        elif m := re.fullmatch(r"The right panel has (\w+) (\w+) instead of (\w+)\.", sentence):
            shape = m[2] if NUMBER_WORDS[m[1]] == 1 else singular(m[2])
            assert count(scenes[1], shape=shape) == NUMBER_WORDS[m[1]], sentence
            assert count(scenes[0], shape=shape) == NUMBER_WORDS[m[3]], sentence
        elif m := re.fullmatch(r"In the right panel the (\w+) object is an? (\w+) instead of an? (\w+)\.", sentence):
            old = the_one([o for o in shapes_of(scenes[0]) if o["color"] == m[1]], m[1])
            new = the_one([o for o in shapes_of(scenes[1]) if o["color"] == m[1]], m[1])
            assert (new["shape"], old["shape"]) == (m[2], m[3]), sentence
        elif m := re.fullmatch(r"In the right panel the (\w+ \w+) has moved (to the left of|to the right of) "
                               r"the (\w+ \w+)\.", sentence):
            relation = RELATIONS[m[2]]
            assert relation_holds(named(scenes[1], m[1]), named(scenes[1], m[3]), relation), sentence
            assert relation_holds(named(scenes[0], m[1]), named(scenes[0], m[3]), OPPOSITE[relation]), sentence
        else:
            raise OracleError(f"no oracle rule understands the sentence {sentence!r}")


# --- pixels ------------------------------------------------------------------------------------------------

def components(mask):
    """Connected components (8-connectivity) of a boolean mask, as arrays of (row, col) pixels.

    Labels horizontal runs of pixels and joins runs on neighbouring rows whose columns touch (union-find).
    """
    runs = []  # (row, first column, last column)
    for row in np.flatnonzero(mask.any(axis=1)):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], mask[row].astype(np.int8), [0]))))
        runs += [(row, start, stop - 1) for start, stop in zip(edges[0::2], edges[1::2])]
    parent = list(range(len(runs)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_row = {}
    for i, (row, _, _) in enumerate(runs):
        by_row.setdefault(row, []).append(i)
    for i, (row, first, last) in enumerate(runs):
        for j in by_row.get(row - 1, []):
            _, other_first, other_last = runs[j]
            if other_first <= last + 1 and first <= other_last + 1:
                parent[root(i)] = root(j)
    members = {}
    for i, (row, first, last) in enumerate(runs):
        members.setdefault(root(i), []).extend((row, col) for col in range(first, last + 1))
    return [np.array(pixels) for pixels in members.values()]


def check_pixels(image, scene):
    pixels = np.asarray(image)
    offset = scene["offset_x"]
    panel = pixels[:, offset:offset + scene["width"]]
    assert panel.shape[:2] == (scene["height"], scene["width"])
    shapes = shapes_of(scene)
    for obj in shapes:
        assert tuple(panel[obj["y"], obj["x"]]) == tuple(obj["rgb"]), f"centre of {obj['color']} {obj['shape']}"

    # Saturated pixels appear only inside the box of a shape of exactly that colour.
    spread = panel.max(axis=2).astype(int) - panel.min(axis=2)
    inside = np.zeros(panel.shape[:2], dtype=bool)
    for obj in shapes:
        x0, y0, x1, y1 = obj["box"]
        box = panel[y0:y1 + 1, x0:x1 + 1]
        inside[y0:y1 + 1, x0:x1 + 1] |= np.all(box == obj["rgb"], axis=2)
    assert not np.any((spread >= 100) & ~inside), "saturated pixels outside every shape"

    areas = {}
    for rgb in {tuple(o["rgb"]) for o in shapes}:
        owners = [o for o in shapes if tuple(o["rgb"]) == rgb]
        blobs = [b for b in components(np.all(panel == rgb, axis=2)) if len(b) >= MIN_COMPONENT_AREA]
        assert len(blobs) == len(owners), f"{owners[0]['color']}: {len(blobs)} blobs for {len(owners)} objects"
        for obj in owners:
            near = [b for b in blobs if np.hypot(*(b.mean(axis=0) - (obj["y"], obj["x"]))) <= obj["radius"] / 2 + 1]
            assert len(near) == 1, f"{obj['color']} {obj['shape']} at ({obj['x']}, {obj['y']})"
            areas[(obj["color"], obj["shape"], obj["x"], obj["y"])] = len(near[0])
    # A larger size class paints more pixels than a smaller one of the same shape.
    for a in shapes:
        for b in shapes:
            if a["shape"] == b["shape"] and a["radius"] > b["radius"]:
                assert areas[(a["color"], a["shape"], a["x"], a["y"])] > areas[(b["color"], b["shape"], b["x"], b["y"])]


# --- tests -------------------------------------------------------------------------------------------------

def test_object_colours_cannot_occur_anywhere_else():
    """Saturated object colours versus grey-ish everything else: the premise of the pixel checks."""
    def spread(rgb):
        return max(rgb) - min(rgb)

    object_rgbs = list(vocabulary.OBJECT_COLORS.values())
    assert len(set(object_rgbs)) == len(object_rgbs) and all(spread(rgb) >= 120 for rgb in object_rgbs)
    other_rgbs = [*vocabulary.BACKGROUND_COLORS.values(), *vocabulary.BOARD_COLORS.values(), vocabulary.SIGN_TEXT_RGB,
                  vocabulary.SIGN_FRAME_RGB, vocabulary.SEPARATOR_RGB]
    assert all(spread(rgb) <= 60 for rgb in other_rgbs)


@pytest.fixture(scope="module")
def samples():
    params = ProceduralParams()
    return {(family, seed): generate_sample(family, seed, params) for family in FAMILIES for seed in SEEDS}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_answer_is_true_of_the_scene_graph(samples, family):
    asked = Counter()
    for seed in SEEDS:
        sample = samples[(family, seed)]
        scenes = sample.metadata()["scenes"]
        if family in INSTRUCTION_FAMILIES:
            check_conversation_truth(sample, scenes)
            asked.update(entry["question_type"] for entry in sample.qa)
        else:
            check_caption_truth(family, sample.caption, scenes[0])
            assert sample.conversations[1]["value"] == sample.caption
        check_description_truth(sample.description, scenes)
    if family == "SynthContrastShort":
        # All four kinds of difference come up in 50 seeds.
        kinds = {contrast_difference(*samples[(family, s)].metadata()["scenes"]) for s in SEEDS}
        assert kinds == {"colour", "count", "shape", "placement"}
    if family == "SynthConvShort":
        assert {"color_of_shape", "count_shape", "relation_horizontal", "sign_text"} <= set(asked)


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_pixels_match_the_scene_graph(samples, family):
    for seed in SEEDS:
        sample = samples[(family, seed)]
        for scene in sample.metadata()["scenes"]:
            check_pixels(sample.image, scene)


@pytest.mark.parametrize("image_size", [32, 45, 128, 256])
def test_truth_and_pixels_hold_at_other_sizes(image_size):
    params = ProceduralParams(image_size=image_size)
    for family in FAMILIES:
        for seed in range(6 if image_size > 128 else 15):
            sample = generate_sample(family, seed, params)
            scenes = sample.metadata()["scenes"]
            for scene in scenes:
                assert (scene["width"], scene["height"]) == (image_size, image_size)
                check_pixels(sample.image, scene)
            if family in INSTRUCTION_FAMILIES:
                check_conversation_truth(sample, scenes)
            else:
                check_caption_truth(family, sample.caption, scenes[0])
            check_description_truth(sample.description, scenes)


def test_the_oracle_rejects_wrong_and_ambiguous_answers(samples):
    """The checks above can fail: a flipped answer, a wrong count and an ambiguous question are caught."""
    sample = samples[("SynthConvShort", 0)]
    scene = sample.metadata()["scenes"][0]
    first = shapes_of(scene)[0]
    wrong = dict(sample.conversations[1], value="no such answer")
    broken = dataclasses.replace(sample, conversations=[sample.conversations[0], wrong])
    with pytest.raises(AssertionError):
        check_conversation_truth(broken, [scene])
    assert single_scene_answer(f"How many {first['shape']}s are there?", scene) == str(count(scene, first["shape"]))
    crowded = dict(scene, objects=[first, dict(first, x=first["x"] + 1)])
    with pytest.raises(OracleError):
        single_scene_answer(f"What colour is the {first['shape']}?", crowded)
    painted_over = np.asarray(sample.image).copy()
    painted_over[first["y"], first["x"]] = (128, 128, 128)
    with pytest.raises(AssertionError):
        check_pixels(painted_over, scene)
