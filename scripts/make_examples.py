"""Regenerate the Lip-sync and Portrait tabs' extra example inputs in assets/ (see assets/PROVENANCE.md):

- hopper.jpg: the public-domain U.S. Navy portrait of Grace Hopper that matplotlib ships as sample data, unchanged;
- speech-gb.wav, speech-us.wav: short sentences spoken by espeak-ng (Debian's `espeak-ng`), 16 kHz mono;
- face-video.mp4: a talking-head video of face.jpg (the head sways, nods and tilts; the mouth stays closed, for
  lip-sync to move) with a third sentence as its sound track, so it is also the "speech from a video" example;
- driving-hopper.mp4: a driving clip of hopper.jpg (head turns, nods, the jaw opens and closes);
- driving-pose.jpg: one driving image, face.jpg's head tilted with the mouth open.

Run from the repository root: `python scripts/make_examples.py [--hopper PATH]` (the default finds grace_hopper.jpg in
an installed matplotlib; `pip download --no-deps matplotlib` and unzip `matplotlib/mpl-data/sample_data/` otherwise).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.audio import SAMPLE_RATE, load_audio  # noqa: E402
from engine.core.media import VideoWriter  # noqa: E402

ASSETS = ROOT / "assets"
FPS = 25

# (voice, words per minute, text) for each speech file; espeak-ng's voice variants give different speakers.
SPEECH = {
    "speech-gb.wav": ("en-gb+f3", 150, "Good morning! Shall we see how well the lips follow these words?"),
    "speech-us.wav": ("en-us+m3", 140, "Open wide, and say ah. Now close again. One, two, three, four, five."),
    "face-video.mp4": ("en-us+f4", 150, "The sound track of a video can be the speech, too."),
}


@dataclass(frozen=True)
class Face:
    """Where to cut a square view of a portrait, and where its mouth and chin are inside that view (pixels)."""

    left: int
    top: int
    side: int
    mouth: tuple[float, float]  # x, y of the lips' centre, in the view
    chin: float  # y of the chin, in the view


COLLINS = Face(left=64, top=0, side=320, mouth=(160.0, 147.0), chin=177.0)  # face.jpg, 512x512
HOPPER = Face(left=57, top=60, side=420, mouth=(208.0, 215.0), chin=265.0)  # hopper.jpg, 512x600


def view(image: np.ndarray, face: Face, size: int) -> tuple[np.ndarray, float]:
    """The face's square view at `size` pixels, and the scale from view pixels to output pixels."""
    crop = image[face.top : face.top + face.side, face.left : face.left + face.side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), size / face.side


def posed(
    frame: np.ndarray, face: Face, scale: float, angle: float, shift: tuple[float, float], zoom: float, opening: float
) -> np.ndarray:
    """The view with the head turned by `angle` degrees about the mouth, moved by `shift`, zoomed, and the jaw
    lowered by `opening` pixels (a remap that stretches the lower face between the lips and the chin)."""
    size = frame.shape[0]
    mx, my = face.mouth[0] * scale, face.mouth[1] * scale
    chin = face.chin * scale
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    if opening > 0:
        # Weight 0 above the lips, 1 from just below them to the chin, fading out below the chin; narrow across.
        below = np.clip((ys - my) / 4.0, 0, 1) * np.clip((chin + 25 * scale - ys) / (25 * scale), 0, 1)
        weight = below * np.exp(-(((xs - mx) / (60 * scale)) ** 2))
        frame = cv2.remap(
            frame, xs, (ys - opening * weight).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        # The gap between the lips is the mouth's dark inside.
        gap = np.clip(1 - np.abs(ys - my - opening / 2) / max(opening / 2, 1), 0, 1)
        gap *= np.exp(-(((xs - mx) / (22 * scale)) ** 2))
        frame = (frame * (1 - 0.8 * gap[..., None])).astype(np.uint8)
    m = cv2.getRotationMatrix2D((mx, my - 40 * scale), angle, zoom)
    m[:, 2] += shift
    return cv2.warpAffine(frame, m, (size, size), borderMode=cv2.BORDER_REFLECT)


def speak(voice: str, rate: int, text: str) -> np.ndarray:
    """espeak-ng's speech, decoded to 16 kHz mono float32."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
        return load_audio(raw)


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def talking_head(face_image: np.ndarray, speech: np.ndarray, out: Path) -> None:
    """face.jpg as a video as long as its speech: slow sway, nod and tilt, mouth closed; the speech is its sound."""
    frame0, scale = view(face_image, COLLINS, 320)
    count = int(np.ceil(len(speech) / SAMPLE_RATE * FPS))
    writer = VideoWriter(out, FPS, 320, 320, audio=speech, sample_rate=SAMPLE_RATE, codec="libx264")
    for i in range(count):
        t = i / FPS
        angle = 4 * np.sin(2 * np.pi * t / 3.1)
        shift = (5 * np.sin(2 * np.pi * t / 2.3), 3 * np.sin(2 * np.pi * t / 1.7))
        writer.write(posed(frame0, COLLINS, scale, angle, shift, 1 + 0.02 * np.sin(2 * np.pi * t / 2.9), 0.0))
    writer.close()


def driving_clip(face_image: np.ndarray, out: Path, seconds: float = 3.0) -> None:
    """hopper.jpg turning, nodding and opening the jaw: a driving clip of another person than face.jpg."""
    frame0, scale = view(face_image, HOPPER, 320)
    writer = VideoWriter(out, FPS, 320, 320, codec="libx264")
    for i in range(int(seconds * FPS)):
        t = i / FPS
        angle = -8 * np.sin(2 * np.pi * t / 1.6)
        shift = (-7 * np.sin(2 * np.pi * t / 2.2), 5 * np.sin(2 * np.pi * t / 1.1))
        opening = 9 * max(0.0, np.sin(2 * np.pi * t / 0.9))
        writer.write(posed(frame0, HOPPER, scale, angle, shift, 1 + 0.05 * np.sin(2 * np.pi * t / 3), opening))
    writer.close()


def driving_pose(face_image: np.ndarray, out: Path) -> None:
    """face.jpg's head tilted and moved, mouth open: one driving image."""
    frame0, scale = view(face_image, COLLINS, 320)
    image = posed(frame0, COLLINS, scale, 12.0, (8.0, 4.0), 1.04, 8.0)
    cv2.imwrite(str(out), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def matplotlib_hopper() -> Path | None:
    try:
        from matplotlib import cbook
    except ImportError:
        return None
    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hopper", type=Path, help="matplotlib's sample_data/grace_hopper.jpg")
    args = parser.parse_args(argv)
    hopper = args.hopper or matplotlib_hopper()
    if hopper is None or not hopper.is_file():
        raise SystemExit("give --hopper PATH: matplotlib's mpl-data/sample_data/grace_hopper.jpg")
    shutil.copyfile(hopper, ASSETS / "hopper.jpg")
    for name in ("speech-gb.wav", "speech-us.wav"):
        write_wav(ASSETS / name, speak(*SPEECH[name]))
    collins = cv2.imread(str(ASSETS / "face.jpg"))
    talking_head(collins, speak(*SPEECH["face-video.mp4"]), ASSETS / "face-video.mp4")
    driving_clip(cv2.imread(str(ASSETS / "hopper.jpg")), ASSETS / "driving-hopper.mp4")
    driving_pose(collins, ASSETS / "driving-pose.jpg")


if __name__ == "__main__":
    main()
