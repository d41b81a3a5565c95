"""Writes lidit_export/data/prompts.jsonl (shipped inside the package): our own captions, composed from the vocabularies and templates
below (written for this project; no scraped data), seeded so the file is reproducible.

    python calibration/make_prompts.py        # rewrites lidit_export/data/prompts.jsonl

Each line: {"text": ..., "category": ..., "split": "calibration" | "evaluation"}.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

COLORS = ["red", "orange", "yellow", "green", "teal", "blue", "navy", "purple", "pink", "magenta", "brown", "beige",
          "black", "white", "gray", "silver", "golden", "turquoise", "maroon", "olive"]
OBJECTS = ["apple", "banana", "teapot", "bicycle", "umbrella", "guitar", "lamp", "chair", "sofa", "kite", "sailboat",
           "lighthouse", "backpack", "clock", "vase", "candle", "cactus", "mushroom", "owl", "fox", "cat", "dog",
           "rabbit", "horse", "elephant", "penguin", "robot", "car", "bus", "tractor", "train", "airplane", "balloon",
           "book", "mug", "bottle", "hat", "shoe", "key", "violin", "telescope", "windmill", "tent", "bridge", "castle"]
PLURALS = {"bus": "buses", "fox": "foxes", "cactus": "cacti", "mushroom": "mushrooms", "candle": "candles",
           "key": "keys", "shoe": "shoes"}
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "heart", "diamond", "crescent"]
MATERIALS = ["wooden", "glass", "metal", "ceramic", "woolen", "plastic", "marble", "paper", "leather", "velvet"]
SIZES = ["tiny", "small", "large", "huge", "tall", "short", "wide", "narrow"]
SURFACES = ["a wooden table", "a marble counter", "the grass", "a sandy beach", "a snowy field", "a stone wall",
            "a red carpet", "a kitchen shelf", "a desk", "a park bench"]
PLACES = ["in a sunny meadow", "on a busy street", "inside a cozy library", "at the edge of a lake", "in a desert at dusk",
          "on a rooftop at night", "in a foggy forest", "in a children's classroom", "on a mountain trail", "underwater"]
STYLES = ["a photo", "an oil painting", "a watercolor", "a pencil sketch", "a 3D render", "a pixel-art image",
          "a macro photograph", "a children's book illustration", "a vintage poster", "a low-poly render"]
RELATIONS = ["to the left of", "to the right of", "above", "below", "behind", "in front of", "next to", "on top of",
             "inside", "under"]
COUNTS = ["two", "three", "four", "five", "six", "seven"]
WORDS = ["HELLO", "OPEN", "SALE", "STOP", "CAFE", "LIDIT", "WELCOME", "EXIT", "BAKERY", "SUMMER", "TAXI", "HOTEL",
         "DREAM", "NORTH", "JAZZ", "PIZZA"]
SIGNS = ["a wooden sign", "a neon sign", "a chalkboard", "a street banner", "a coffee cup", "a t-shirt", "a book cover",
         "a birthday cake", "a shop window", "a road sign"]


def plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


def generate(rng: random.Random) -> dict[str, list[str]]:
    c, o, m, s = (lambda: rng.choice(COLORS)), (lambda: rng.choice(OBJECTS)), (lambda: rng.choice(MATERIALS)), (lambda: rng.choice(SIZES))
    rel, place, style, surface = (lambda: rng.choice(RELATIONS)), (lambda: rng.choice(PLACES)), (lambda: rng.choice(STYLES)), (lambda: rng.choice(SURFACES))
    shape, sign, word, count = (lambda: rng.choice(SHAPES)), (lambda: rng.choice(SIGNS)), (lambda: rng.choice(WORDS)), (lambda: rng.choice(COUNTS))

    def counted():
        n = count()
        return rng.choice([f"{n} {c()} {plural(o())} on {surface()}", f"{n} {plural(o())} and one {c()} {o()}",
                           f"exactly {n} {m()} {plural(o())} in a row"])

    def text():
        w = word()
        return rng.choice([f'{sign()} that says "{w}"', f'the word "{w}" written in {c()} letters on {surface()}',
                           f'{style()} of {sign()} reading "{w}" {place()}'])

    def long():
        clauses = [f"a {s()} {c()} {o()} {rel()} a {m()} {o()}", f"{count()} {c()} {plural(o())} scattered around it",
                   f'{sign()} that says "{word()}" in the background',
                   f"a {c()} sky with {rng.choice(['scattered clouds', 'a rainbow', 'falling snow', 'stars'])}",
                   f"a {m()} {o()} on the far {rng.choice(['left', 'right'])}"]
        rng.shuffle(clauses)
        return f"{style()} {place()}: " + ", ".join(clauses[: rng.randint(3, 5)])

    recipes = [
        ("objects", 80, lambda: rng.choice([f"a {s()} {m()} {o()} on {surface()}", f"{style()} of a {m()} {o()} {place()}",
                                            f"a {c()} {o()} {place()}, soft morning light"])),
        ("colors", 80, lambda: rng.choice([f"a {c()} {o()} and a {c()} {o()}",
                                           f"a {c()} {o()} with {c()} stripes next to a {c()} wall",
                                           f"a {o()} painted half {c()} and half {c()}"])),
        ("counts", 80, counted),
        ("spatial", 100, lambda: rng.choice([f"a {c()} {o()} {rel()} a {c()} {o()}",
                                             f"{rel().capitalize()} a {s()} {o()} there is a {c()} {o()}",
                                             f"a {o()}, {c()}, and a {o()} that is {c()} on its {rng.choice(['left', 'right'])}"])),
        ("shapes", 60, lambda: rng.choice([f"a {c()} {shape()} {rng.choice(RELATIONS[:4])} a {c()} {shape()}",
                                           f"a {s()} {c()} {shape()} on a {c()} background"])),
        ("text", 70, text),
        ("long", 70, long),
        ("short", 60, lambda: rng.choice([o(), f"{c()} {o()}", f"a {m()} {o()}", f"{style()} of a {o()}"])),
    ]
    out = {}
    for category, target, make in recipes:
        texts: set[str] = set()
        while len(texts) < target:
            texts.add(make())
        out[category] = sorted(texts)
    order = ("objects", "colors", "counts", "spatial", "text", "long", "short", "shapes")
    return {k: out[k] for k in order}


def main() -> None:
    rng = random.Random(20261125)
    rows = [{"text": text, "category": cat} for cat, texts in generate(rng).items() for text in texts]
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["split"] = "evaluation" if i % 4 == 3 else "calibration"  # 3/4 calibration, 1/4 held out
    path = Path(__file__).resolve().parents[1] / "lidit_export" / "data" / "prompts.jsonl"  # shipped in the package
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {path}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
