"""builtin:scenes — captioned pictures of one or two glyphs and shapes, for text-to-image models.

A scene is a background colour and one or two objects. An object is a letter (A-Z), a digit (0-9) or a
shape (circle, square, triangle) with a colour, a size and a position (left, right, top, bottom or
centre); two objects sit on opposite sides (left and right, or top and bottom). Every scene is drawn
with Pillow from its attributes, and described by sentences made from several templates and
synonyms ("a small red letter A on the left on a white background"), so a model must read the
sentence to draw the right thing.

A fixed set of (object, colour) pairs — one colour per object — never appears in training scenes
(`holdout=True`): prompts with them measure whether a model composes attributes it only saw apart.
`parse_caption` reads the attributes back out of a sentence, so any prompt in this vocabulary can
be scored (see `genloom.eval.scenes`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.errors import DataError

__all__ = [
    "SceneObject", "Scene", "IDENTITIES", "OBJECT_COLOURS", "BACKGROUNDS", "SIZES", "POSITIONS", "PAIRS",
    "SCENE_SIZE", "random_scene", "random_scenes", "render_scene", "render_scenes", "caption_scene",
    "parse_caption", "is_held_out", "held_out_colour", "digit_caption", "DIGIT_WORDS", "concept_scenes",
]

SCENE_SIZE = 32
SUPERSAMPLE = 4                  # draw at 4x, then average 4x4 blocks: smooth edges
SHAPES = ("circle", "square", "triangle")
IDENTITIES = tuple(string.ascii_uppercase) + tuple(string.digits) + SHAPES
OBJECT_COLOURS = {"red": (220, 30, 30), "green": (30, 165, 50), "blue": (40, 80, 230),
                  "yellow": (235, 205, 20), "purple": (145, 45, 200), "orange": (250, 125, 10)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (12, 12, 12), "gray": (120, 120, 120)}
SIZES = {"small": 10, "large": 16}           # object height in pixels of the 32x32 scene
POSITIONS = {"left": (-8, 0), "right": (8, 0), "top": (0, -8), "bottom": (0, 8), "centre": (0, 0)}
PAIRS = (("left", "right"), ("top", "bottom"))   # where two objects go
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class SceneObject:
    identity: str                 # "A".."Z", "0".."9", "circle", "square" or "triangle"
    colour: str | None = None     # a key of OBJECT_COLOURS (None in a parsed prompt: not asked for)
    size: str | None = None       # a key of SIZES
    position: str | None = None   # a key of POSITIONS


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str | None = None                   # a key of BACKGROUNDS
    jitter: tuple[tuple[int, int], ...] = field(default=(), compare=False)   # pixel offsets per object


# ----------------------------------------------------------------------------------------------
# Held-out combinations
# ----------------------------------------------------------------------------------------------

def held_out_colour(identity: str) -> str:
    """The one colour `identity` never wears in training scenes (the colours are spread evenly)."""
    order = np.random.default_rng(1234).permutation(len(IDENTITIES))  # fixed: part of the data set's definition
    return list(OBJECT_COLOURS)[int(order[IDENTITIES.index(identity)]) % len(OBJECT_COLOURS)]


def is_held_out(scene: Scene) -> bool:
    """Whether any object of `scene` wears its held-out colour."""
    return any(o.colour is not None and o.colour == held_out_colour(o.identity) for o in scene.objects)


# ----------------------------------------------------------------------------------------------
# Drawing scenes at random
# ----------------------------------------------------------------------------------------------

def _random_object(rng: np.random.Generator, position: str, holdout: bool | None) -> SceneObject:
    """holdout None: any colour; True: only held-out pairs; False: never a held-out pair."""
    identity = IDENTITIES[rng.integers(len(IDENTITIES))]
    colours = list(OBJECT_COLOURS)
    if holdout is not None:
        banned = held_out_colour(identity)
        colours = [banned] if holdout else [c for c in colours if c != banned]
    return SceneObject(identity, colours[rng.integers(len(colours))], list(SIZES)[rng.integers(len(SIZES))], position)


def random_scene(rng: np.random.Generator, two_objects: bool, holdout: bool | None = False) -> Scene:
    """One scene; `holdout` as in `_random_object` (for two objects, True makes the first one held out)."""
    if two_objects:
        pair = PAIRS[rng.integers(len(PAIRS))]
        first = _random_object(rng, pair[0], holdout)
        second = _random_object(rng, pair[1], False if holdout is not None else None)
        objects = (first, second) if rng.random() < 0.5 else (second, first)
    else:
        objects = (_random_object(rng, list(POSITIONS)[rng.integers(len(POSITIONS))], holdout),)
    jitter = tuple((int(rng.integers(-1, 2)), int(rng.integers(-1, 2))) for _ in objects)
    return Scene(objects, list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], jitter)


def concept_scenes(count: int, seed: int, identity: str = "star") -> list[Scene]:
    """`count` single-object scenes of a shape the built-in scenes never show (random colour, size, place,
    background): the "handful of images" that personalisation learns a new word from."""
    rng = np.random.default_rng([seed, 77])
    return [Scene((SceneObject(identity, list(OBJECT_COLOURS)[rng.integers(len(OBJECT_COLOURS))],
                               list(SIZES)[rng.integers(len(SIZES))], list(POSITIONS)[rng.integers(len(POSITIONS))]),),
                  list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
                  ((int(rng.integers(-1, 2)), int(rng.integers(-1, 2))),)) for _ in range(count)]


def random_scenes(count: int, seed: int, two_object_fraction: float = 0.5,
                  holdout: bool | None = False) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, bool(rng.random() < two_object_fraction), holdout) for _ in range(count)]


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(height: int) -> ImageFont.FreeTypeFont:
    """Pillow's scalable default font at the size whose capital letters are `height` pixels (at 4x)."""
    if height not in _FONTS:
        try:
            probe = ImageFont.load_default(size=100)
        except TypeError:  # Pillow < 10.1 has no size argument
            probe = None
        if not isinstance(probe, ImageFont.FreeTypeFont):
            raise DataError("data.path=builtin:scenes needs Pillow >= 10.1 built with FreeType (pip install -U Pillow)")
        _, top, _, bottom = probe.getbbox("H")
        _FONTS[height] = ImageFont.load_default(size=max(1, round(100 * height / (bottom - top))))
    return _FONTS[height]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, offset: tuple[int, int]) -> None:
    k = SUPERSAMPLE
    dx, dy = POSITIONS[obj.position]
    cx, cy = (SCENE_SIZE / 2 + dx + offset[0]) * k, (SCENE_SIZE / 2 + dy + offset[1]) * k
    h = SIZES[obj.size] * k
    colour = OBJECT_COLOURS[obj.colour]
    if obj.identity == "circle":
        draw.ellipse((cx - h / 2, cy - h / 2, cx + h / 2, cy + h / 2), fill=colour)
    elif obj.identity == "square":
        s = 0.85 * h
        draw.rectangle((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=colour)
    elif obj.identity == "star":               # never in builtin:scenes: the new concept of builtin:stars
        points = [(cx + (h / 2 if i % 2 == 0 else h / 5) * np.sin(np.pi * i / 5),
                   cy - (h / 2 if i % 2 == 0 else h / 5) * np.cos(np.pi * i / 5)) for i in range(10)]
        draw.polygon(points, fill=colour)
    elif obj.identity == "triangle":
        draw.polygon([(cx, cy - h / 2), (cx - 0.58 * h, cy + h / 2), (cx + 0.58 * h, cy + h / 2)], fill=colour)
    else:
        font = _font(h)
        left, top, right, bottom = font.getbbox(obj.identity)
        draw.text((cx - (left + right) / 2, cy - (top + bottom) / 2), obj.identity, fill=colour, font=font)


def render_scene(scene: Scene) -> np.ndarray:
    """The (32, 32, 3) uint8 picture of a fully specified scene."""
    side = SCENE_SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    jitter = scene.jitter or ((0, 0),) * len(scene.objects)
    for obj, offset in zip(scene.objects, jitter):
        _draw_object(draw, obj, offset)
    return np.asarray(canvas.reduce(SUPERSAMPLE))


def render_scenes(scenes: list[Scene]) -> np.ndarray:
    """(N, 32, 32, 3) uint8."""
    return np.stack([render_scene(s) for s in scenes]) if scenes else np.zeros((0, 32, 32, 3), np.uint8)


# ----------------------------------------------------------------------------------------------
# Captions: several templates and synonyms
# ----------------------------------------------------------------------------------------------

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOUR_WORDS = {"red": ("red",), "green": ("green",), "blue": ("blue",), "yellow": ("yellow",),
                "purple": ("purple", "violet"), "orange": ("orange",)}
BACKGROUND_WORDS = {"white": ("white",), "black": ("black",), "gray": ("gray", "grey")}
PLACE_PHRASES = {"left": ("on the left", "at the left", "on the left side"),
                 "right": ("on the right", "at the right", "on the right side"),
                 "top": ("at the top", "near the top", "on the top"),
                 "bottom": ("at the bottom", "near the bottom", "on the bottom"),
                 "centre": ("in the centre", "in the middle", "in the center")}
SHAPE_NOUNS = {"circle": ("circle", "disc"), "square": ("square", "block"), "triangle": ("triangle",)}

# Wordings kept out of training: prompts written with them test whether a model understands paraphrases.
PARAPHRASE_SIZE = {"small": ("miniature", "petite"), "large": ("huge", "giant")}
PARAPHRASE_PLACE = {"left": ("positioned to the left",), "right": ("positioned to the right",),
                    "top": ("placed up high",), "bottom": ("placed down low",),
                    "centre": ("placed right in the center",)}
PARAPHRASE_SHAPES = {"circle": ("round dot",), "square": ("box",), "triangle": ("pyramid shape",)}


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou8" or word in ("F", "H", "L", "M", "N", "S", "X", "R") else "a"


def _noun(identity: str, rng: np.random.Generator, paraphrase: bool, concept: dict | None = None) -> str:
    if concept and identity in concept:
        return concept[identity]
    if identity in SHAPES:
        return _pick(rng, (PARAPHRASE_SHAPES if paraphrase else SHAPE_NOUNS)[identity])
    if identity.isdigit():
        word = DIGIT_WORDS[int(identity)]
        forms = (f"numeral {identity}", f"figure {word}") if paraphrase else \
            (f"digit {identity}", f"number {identity}", f"digit {word}", f"number {word}")
        return _pick(rng, forms)
    return _pick(rng, (f"character {identity}", f"uppercase {identity}") if paraphrase else
                 (f"letter {identity}", f"capital {identity}", f"capital letter {identity}"))


def _object_phrase(obj: SceneObject, rng: np.random.Generator, paraphrase: bool, with_place: bool = True,
                   concept: dict | None = None) -> str:
    words = []
    if obj.size is not None and rng.random() < 0.7:              # size is sometimes left unsaid
        words.append(_pick(rng, (PARAPHRASE_SIZE if paraphrase else SIZE_WORDS)[obj.size]))
    if obj.colour is not None:
        words.append(_pick(rng, COLOUR_WORDS[obj.colour]))
    words.append(_noun(obj.identity, rng, paraphrase, concept))
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if with_place and obj.position is not None:
        phrase += " " + _pick(rng, (PARAPHRASE_PLACE if paraphrase else PLACE_PHRASES)[obj.position])
    return phrase


def caption_scene(scene: Scene, rng: np.random.Generator, paraphrase: bool = False,
                  concept: dict | None = None) -> str:
    """A sentence describing `scene`, its template and synonyms drawn from `rng`.

    paraphrase=True uses wordings and sentence shapes that training captions never use. `concept` maps
    an identity outside the vocabulary (the star of builtin:stars) to the word that names it.
    """
    things = " and ".join(_object_phrase(o, rng, paraphrase, concept=concept) for o in scene.objects)
    bg = scene.background and _pick(rng, BACKGROUND_WORDS[scene.background])
    if paraphrase:
        if bg is None:
            return f"there is {things}"
        return _pick(rng, (f"there is {things}, and the backdrop is {bg}",
                           f"a {bg} backdrop showing {things}"))
    if bg is None:
        return _pick(rng, (things, f"a picture of {things}"))
    return _pick(rng, (f"{things} on a {bg} background",
                       f"{things} against a {bg} background",
                       f"{bg} background with {things}",
                       f"{things}, {bg} background"))


# ----------------------------------------------------------------------------------------------
# Parsing a caption back into attributes
# ----------------------------------------------------------------------------------------------

def _lookup(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: key for key, words in table.items() for word in words}


_SIZE = _lookup({k: SIZE_WORDS[k] + PARAPHRASE_SIZE[k] for k in SIZES})
_COLOUR = _lookup(COLOUR_WORDS)
_BACKGROUND = _lookup(BACKGROUND_WORDS)
_PLACE = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre",
          "center": "centre", "middle": "centre", "high": "top", "low": "bottom"}
_SHAPE = {"circle": "circle", "disc": "circle", "dot": "circle", "square": "square", "block": "square",
          "box": "square", "triangle": "triangle", "pyramid": "triangle"}
_CHARACTER_NOUNS = {"letter", "capital", "character", "uppercase", "digit", "number", "numeral", "figure"}


def parse_caption(text: str) -> Scene:
    """The attributes a scene caption asks for: objects (identity, and colour, size, position where the
    sentence says them) and the background colour (None where it says none). Words it does not know are
    ignored; a caption naming no object gives a Scene without objects."""
    words = re.findall(r"[A-Za-z]+|\d", text)
    lower = [w.lower() for w in words]
    used = [False] * len(words)
    background = None
    for i, w in enumerate(lower):                                     # "... white background", "backdrop is white"
        if w in ("background", "backdrop"):
            for j in (i - 1, i + 2, i + 1):
                if 0 <= j < len(words) and lower[j] in _BACKGROUND and not used[j]:
                    background, used[j] = _BACKGROUND[lower[j]], True
                    break
            used[i] = True
    # Objects: each noun closes an object; colour and size words before it belong to it.
    objects: list[dict] = []
    pending: dict = {}
    places: list[tuple[int, str]] = []                                 # (word index, position)
    i = 0
    while i < len(words):
        w, lw = words[i], lower[i]
        if used[i]:
            pass
        elif lw in _COLOUR:
            pending["colour"] = _COLOUR[lw]
        elif lw in _SIZE:
            pending["size"] = _SIZE[lw]
        elif lw in _PLACE and not (lw == "right" and i + 1 < len(words) and lower[i + 1] in ("in", "at")):
            places.append((i, _PLACE[lw]))                             # ("right in the center" is the centre)
        elif lw in _SHAPE:
            objects.append({**pending, "identity": _SHAPE[lw], "index": i})
            pending = {}
        elif lw in _CHARACTER_NOUNS and i + 1 < len(words):
            nxt, nl = words[i + 1], lower[i + 1]
            if nl == "letter" and i + 2 < len(words):                   # "capital letter A"
                i, nxt, nl = i + 1, words[i + 2], lower[i + 2]
            identity = None
            if len(nxt) == 1 and (nxt.isdigit() or nxt.isalpha()):
                identity = nxt.upper()
            elif nl in DIGIT_WORDS:
                identity = str(DIGIT_WORDS.index(nl))
            if identity is not None:
                objects.append({**pending, "identity": identity, "index": i + 1})
                pending = {}
                i += 1
        i += 1
    # Each place phrase belongs to the nearest object before it (or, before any object, the first one).
    for index, place in places:
        before = [o for o in objects if o["index"] < index]
        target = before[-1] if before else (objects[0] if objects else None)
        if target is not None and "position" not in target:
            target["position"] = place
    return Scene(tuple(SceneObject(o["identity"], o.get("colour"), o.get("size"), o.get("position"))
                       for o in objects), background)


# ----------------------------------------------------------------------------------------------
# Captions of the handwritten digits
# ----------------------------------------------------------------------------------------------

def digit_caption(digit: int, rng: np.random.Generator) -> str:
    word = DIGIT_WORDS[digit]
    return _pick(rng, (f"a handwritten {word}", f"a handwritten {digit}", f"the digit {digit} written by hand",
                       f"a hand drawn number {word}", f"the number {word}", f"digit {digit}"))
