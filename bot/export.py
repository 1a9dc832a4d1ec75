"""/export: the collected corrections as the dataset an ML person wants, one zip: a PNG per 28x28 input and a
CSV of label, pseudonymous user, time and model version."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import zipfile

from PIL import Image

from storage.repository import LabelledPhoto

CSV_COLUMNS = ["file", "label", "confirmed", "user", "time", "model_version"]


def user_code(user_id: int, key: bytes) -> str:
    """A stable pseudonym: the same user gets the same code in every export, and without the key the
    Telegram id cannot be found again by hashing every possible id."""
    return hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()[:16]


def corrections_zip(photos: list[LabelledPhoto], key: bytes) -> tuple[bytes, int]:
    """The zip's bytes and the number of images in it. Photos whose answer has another number of digits
    than were found cannot be labelled digit by digit and are left out."""
    out, table = io.BytesIO(), io.StringIO()
    rows = csv.writer(table, lineterminator="\n")
    rows.writerow(CSV_COLUMNS)
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for photo in photos:
            if len(photo.label) != len(photo.inputs):
                continue
            for position, (image, label) in enumerate(zip(photo.inputs, photo.label, strict=True)):
                name = f"images/{photo.feedback_id}_{position}.png"
                png = io.BytesIO()
                Image.fromarray(image).save(png, "PNG")
                archive.writestr(name, png.getvalue())
                rows.writerow(
                    [
                        name,
                        label,
                        int(photo.confirmed),
                        user_code(photo.user_id, key),
                        photo.created_at.isoformat(timespec="seconds"),
                        photo.model_version if photo.model_version is not None else "",
                    ]
                )
                count += 1
        archive.writestr("labels.csv", table.getvalue())
    return out.getvalue(), count
