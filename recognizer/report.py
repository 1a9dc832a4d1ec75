""" "What I saw": one picture that explains a reading. The photo with a numbered box around each digit found,
and beside it, per digit, the 28x28 input the model saw (enlarged) with its top-3 guesses. It makes a wrong
answer understandable: a digit too small, cut off, or merged with a ruled line."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from recognizer.classify import Reading

PHOTO_HEIGHT = 360  # the photo is scaled to this height (less if that would make it wider than PHOTO_WIDTH)
PHOTO_WIDTH = 640
COLUMN = 120  # width of one digit's column; the picture grows by this much per digit
INPUT_SCALE = 3  # 28x28 -> 84x84, nearest neighbour: the pixels stay visible
MARGIN = 12
COLORS = [(230, 25, 75), (60, 140, 60), (0, 110, 200), (240, 130, 20), (145, 30, 180), (0, 150, 150)]


def what_i_saw(gray: np.ndarray, reading: Reading) -> bytes:
    """PNG bytes for the photo `gray` ((H, W) floats in [0, 1], as the recognizer decoded it) and its
    reading. The width grows with the number of digits; no text but digits and percentages, so the picture
    needs no translation."""
    photo = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    scale = min(PHOTO_HEIGHT / photo.height, PHOTO_WIDTH / photo.width)
    photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))))
    side = 28 * INPUT_SCALE
    font = ImageFont.load_default(size=16)
    width = MARGIN + photo.width + MARGIN + len(reading.items) * COLUMN
    height = MARGIN + max(photo.height, 24 + side + 8 + 3 * 22) + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(photo, (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)
    for index, item in enumerate(reading.items):
        color = COLORS[index % len(COLORS)]
        x0, y0, x1, y1 = item.box
        box = (
            MARGIN + x0 * photo.width,
            MARGIN + y0 * photo.height,
            MARGIN + x1 * photo.width,
            MARGIN + y1 * photo.height,
        )
        draw.rectangle(box, outline=color, width=3)
        draw.text((box[0] + 2, max(0, box[1] - 19)), str(index + 1), fill=color, font=font)

        left = MARGIN + photo.width + MARGIN + index * COLUMN
        draw.text((left, MARGIN), f"{index + 1}", fill=color, font=font)
        seen = Image.fromarray((np.clip(reading.inputs[index], 0, 1) * 255).astype(np.uint8))
        canvas.paste(seen.resize((side, side), Image.Resampling.NEAREST), (left, MARGIN + 24))
        draw.rectangle((left - 1, MARGIN + 23, left + side, MARGIN + 24 + side), outline=color, width=1)
        for rank, (digit, probability) in enumerate(item.top(3)):
            top = MARGIN + 24 + side + 8 + rank * 22
            if bar := round(probability * (COLUMN - 16)):
                draw.rectangle((left, top + 2, left + bar, top + 18), fill=(225, 225, 225))
            draw.text((left + 2, top), f"{digit}  {probability:.0%}", fill="black", font=font)
    out = io.BytesIO()
    canvas.save(out, "PNG", optimize=True)
    return out.getvalue()
