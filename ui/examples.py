"""Example inputs shown as one row of captioned thumbnails, made from the files when the app starts: a face with its
speech's waveform along the top, or a source portrait with its driver in the corner; a click loads them into the
tab's inputs.

One row of pictures, rather than gr.Examples' table (a row per example, about 100 px each), so that a tab's
inputs, its button and its examples fit on the first screen. Where the row does not fit (a phone) it wraps onto a
second (ui/style.py), rather than running off the screen's edge with no sign that it scrolls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np

from engine.core.audio import load_audio
from engine.core.media import is_image, load_image, read_frames

SIDE = 160  # pixels: a thumbnail is a square
INSET = 76  # the second input's picture, in the top-right corner
STRIP = 40  # the speech's waveform, along the top
EXAMPLES_CLASS = "ab-examples"  # ui/style.py: the thumbnails wrap where one row does not fit


@dataclass(frozen=True)
class Example:
    """One example: its caption and one value (a file path or None) per input, in the inputs' order."""

    caption: str
    values: tuple[Path | None, ...]


def _square(path: Path, side: int) -> np.ndarray:
    """An image, or a video's first frame, cut to a square around where a portrait's face is (the upper middle)
    and scaled to `side` pixels (BGR)."""
    frame = load_image(path) if is_image(path) else next(iter(read_frames(path)))
    h, w = frame.shape[:2]
    n = round(min(h, w) * 0.8)
    top, left = (h - n) // 5, (w - n) // 2
    return cv2.resize(frame[top : top + n, left : left + n], (side, side), interpolation=cv2.INTER_AREA)


def _waveform(path: Path, width: int, height: int) -> np.ndarray:
    """A speech file's (or a video's sound track's) loudness over time, drawn as bars on a light strip."""
    wav = np.abs(load_audio(path))
    strip = np.full((height, width, 3), 250, np.uint8)
    peak = max(float(wav.max()), 1e-6)
    for i, chunk in enumerate(np.array_split(wav, width // 3)):
        half = int((float(chunk.max()) if chunk.size else 0.0) / peak * (height * 0.42)) + 1
        x = i * 3 + 1
        cv2.rectangle(strip, (x, height // 2 - half), (x + 1, height // 2 + half), (185, 118, 0), -1)
    return strip


def thumbnail(example: Example, sound: Sequence[bool], folder: Path, name: str) -> Path:
    """The example's first picture as a square, with its speech as a waveform along the top or its second picture
    in the top-right corner; written as a JPEG into `folder`."""
    given = [(path, as_sound) for path, as_sound in zip(example.values, sound, strict=True) if path is not None]
    (main, _), rest = given[0], given[1:]
    picture = _square(main, SIDE)
    for path, as_sound in rest[:1]:
        if as_sound:
            picture[:STRIP] = _waveform(path, SIDE, STRIP)
        else:
            inset = cv2.copyMakeBorder(_square(path, INSET - 4), 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            picture[:INSET, SIDE - INSET :] = inset
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.jpg"
    cv2.imwrite(str(out), picture, [cv2.IMWRITE_JPEG_QUALITY, 88])
    return out


def example_gallery(
    examples: Sequence[Example], inputs: Sequence[Any], sound: Sequence[bool], folder: Path, label: str, elem_id: str
) -> gr.Gallery:
    """The examples as one row of captioned thumbnails (made into `folder`), two or more rows on a narrow screen; a
    click loads one into `inputs`. `sound` says which inputs are speech (drawn as a waveform; a video there stands
    for its sound track)."""
    pictures = [(str(thumbnail(e, sound, folder, f"{elem_id}-{i}")), e.caption) for i, e in enumerate(examples)]
    gr.Markdown(f"**{label}**: click one to load it · where each comes from: `assets/PROVENANCE.md`")
    gallery = gr.Gallery(
        pictures, label=label, show_label=False, columns=len(pictures), rows=1, allow_preview=False,
        height="fit-content",  # as tall as its rows ("auto" means at least 320 px, 450 on a wide screen)
        object_fit="contain", interactive=False, elem_id=elem_id, elem_classes=[EXAMPLES_CLASS], buttons=[],
    )  # fmt: skip

    def load(selected: gr.SelectData) -> tuple[Any, ...]:
        chosen = examples[selected.index]
        return tuple(None if v is None else str(v) for v in chosen.values)

    # always_last: a second click while the first example still loads is run after it (Gradio's default for select
    # dropped it, leaving the inputs on the first example under the second's highlight)
    gallery.select(load, None, list(inputs), api_visibility="private", queue=False, trigger_mode="always_last")
    return gallery


__all__ = ["EXAMPLES_CLASS", "Example", "example_gallery", "thumbnail"]
