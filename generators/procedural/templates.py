"""Every sentence pattern the procedural backend writes: prompts, captions, descriptions and questions.

Kept as data in one module so the template fingerprint in each record's provenance changes whenever any
wording changes.
"""

from __future__ import annotations

from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION

YES_NO_OPTIONS = ("Yes", "No")  # yes/no questions are two-option letter questions: A. Yes / B. No

# Brief-caption requests in the style of LLaVA-558k.
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)

RELATION_PHRASES: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE_RELATION: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}

# (row, column) of the 3x3 grid -> where an object "is".
PLACE_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top centre": "at the top", "top right": "at the top right",
    "middle left": "on the left", "middle centre": "in the centre", "middle right": "on the right",
    "bottom left": "at the bottom left", "bottom centre": "at the bottom", "bottom right": "at the bottom right",
}

# Background style -> phrase; {0} and {1} are the background colour names.
BACKGROUND_PHRASES: dict[str, str] = {
    "solid": "a plain {0} background",
    "vertical_gradient": "a {0} to {1} gradient background",
    "horizontal_gradient": "a {0} to {1} gradient background",
    "stripes": "a background of {0} and {1} stripes",
    "checker": "a {0} and {1} checkered background",
    "speckle": "a speckled {0} background",
}

CAPTION_TEMPLATES: dict[str, str] = {
    "listing": "{items}.",
    "listing_on_background": "{items} on {background}.",
    "relation": "{a} {relation} {b}.",
    "board": '{board} that reads "{text}".',
    "board_and_shape": '{board} that reads "{text}" {relation} {shape}.',
    "board_and_shapes": '{board} that reads "{text}" and {count} shapes.',
    "overview": "{count} shapes on {background}.",
    "overview_with_board": "{count} shapes and {board} on {background}.",
    "overview_with_board_short": "{count} shapes and {board}.",
    "overview_short": "{count} shapes.",
    "contrast_colour": "{a} on the left, {b} on the right.",
    "contrast_count": "{a} on the left, {b} on the right.",
    "contrast_shape": "{a} on the left, {b} on the right.",
    "contrast_placement": "{a} changes sides relative to {b}.",
}

DESCRIPTION_TEMPLATES: dict[str, str] = {
    "intro": "The image shows {things} on {background}.",
    "shape": "{shape} is {place}.",
    "board": '{board} {place} reads "{text}".',
    "relation": "{a} is {relation} {b}.",
    "contrast_intro": "Two panels sit side by side, separated by a thin line, and differ only in {difference}.",
    "contrast_left": "The left panel shows {items}, against {background}.",
    "contrast_colour": "In the right panel the {shape} is {new} instead of {old}.",
    "contrast_count": "The right panel has {new} instead of {old}.",
    "contrast_shape": "In the right panel the {color} object is {new} instead of {old}.",
    "contrast_placement": "In the right panel {a} has moved {relation} {b}.",
}
# Closing sentences that pad short descriptions to the minimum length; each is used only where it is true.
SHAPE_FILLERS: tuple[str, ...] = (
    "Every shape is flat and evenly coloured, with crisp edges.",
    "The shapes have no outlines and cast no shadows.",
)
BOARD_FILLER = "The {kind} has dark letters on a light board."
GENERAL_FILLERS: tuple[str, ...] = (
    "Nothing else appears in the picture.",
    "It is a simple, flat illustration seen straight on.",
)

DIFFERENCE_PHRASES: dict[str, str] = {
    "colour": "the colour of the {shape}",
    "count": "the number of {shapes}",
    "shape": "the shape of the {color} object",
    "placement": "the position of {a}",
}

# Question type -> phrasings; one is picked per question.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color_of_shape": ("What colour is the {shape}?", "What is the colour of the {shape}?"),
    "shape_of_color": ("What shape is the {color} object?", "Which shape is {color}?"),
    "count_shape": ("How many {shapes} are there?", "How many {shapes} are in the image?"),
    "count_color": ("How many {color} shapes are there?", "How many shapes are {color}?"),
    "count_total": ("How many shapes are there in total?", "How many shapes does the image contain?"),
    "relation_horizontal": ("Is {a} to the left or to the right of {b}?", "Is {a} left or right of {b}?"),
    "relation_vertical": ("Is {a} above or below {b}?",),
    "larger": ("Which is larger, {a} or {b}?", "Which is bigger: {a} or {b}?"),
    "side_of_image": ("Is {a} on the left or the right side of the image?", "On which side of the image is {a}?"),
    "sign_text": ("What does the {kind} say?", "What word is written on the {kind}?"),
    "sign_kind": ('What kind of display shows the word "{text}"?', 'What is the word "{text}" written on?'),
    "background_pattern": ("What pattern does the background have?", "What kind of background does the image have?"),
    "background_color": ("What colour is the background?",),
    "exists": ("Is there {thing} in the image?", "Does the image contain {thing}?"),
    "relation_check": ("Is {a} {relation} {b}?",),
    "color_check": ("Is the {shape} {color}?",),
    "text_check": ('Does the {kind} read "{text}"?',),
    "difference_kind": ("What is different between the left and right images?",
                        "What changes from the left image to the right image?"),
    "contrast_color": ("What colour is the {shape} in the {side} image?",),
    "contrast_which_has": ("Which image has {thing}?", "Which image contains {thing}?"),
    "contrast_count": ("How many {shapes} are in the {side} image?",),
    "contrast_more": ("Which image has more {shapes}?",),
    "contrast_fewer": ("Which image has fewer {shapes}?",),
    "contrast_shape": ("What shape is the {color} object in the {side} image?",),
    "contrast_relation": ("In the {side} image, is {a} to the left or to the right of {b}?",),
    "contrast_which_relation": ("In which image is {a} {relation} {b}?",),
}


def templates_snapshot() -> dict[str, object]:
    """Every template as plain JSON, for the template fingerprint."""
    return {
        "short_answer_instruction": SHORT_ANSWER_INSTRUCTION,
        "multiple_choice_instruction": MULTIPLE_CHOICE_INSTRUCTION,
        "yes_no_options": list(YES_NO_OPTIONS),
        "caption_prompts": list(CAPTION_PROMPTS),
        "relation_phrases": RELATION_PHRASES,
        "place_phrases": PLACE_PHRASES,
        "background_phrases": BACKGROUND_PHRASES,
        "caption_templates": CAPTION_TEMPLATES,
        "description_templates": DESCRIPTION_TEMPLATES,
        "shape_fillers": list(SHAPE_FILLERS),
        "board_filler": BOARD_FILLER,
        "general_fillers": list(GENERAL_FILLERS),
        "difference_phrases": DIFFERENCE_PHRASES,
        "question_templates": {k: list(v) for k, v in QUESTION_TEMPLATES.items()},
    }
