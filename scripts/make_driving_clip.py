"""Regenerate assets/driving.mp4, the Portrait tab's example driving clip, from the public-domain face.jpg:
3 s at 25 fps of the head tilting, swaying, nodding and moving towards the camera, with the jaw opening
(a remap that stretches the lower face). Run from the repository root: python scripts/make_driving_clip.py"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.core.media import VideoWriter

SIZE, FPS, FRAMES = 320, 25, 75


def main() -> None:
    # No options, but -h must answer with this text: run without a parser, `-h` regenerated the committed clip.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    face = cv2.resize(cv2.imread("assets/face.jpg"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    writer = VideoWriter("assets/driving.mp4", FPS, SIZE, SIZE)
    for i in range(FRAMES):
        t = i / FPS
        m = cv2.getRotationMatrix2D((160, 110), 7 * np.sin(2 * np.pi * t / 1.5), 1 + 0.04 * np.sin(2 * np.pi * t / 3))
        m[0, 2] += 6 * np.sin(2 * np.pi * t / 2)  # sway
        m[1, 2] += 4 * np.sin(2 * np.pi * t / 1.2)  # nod
        frame = cv2.warpAffine(face, m, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
        opening = 6 * max(0.0, np.sin(2 * np.pi * t / 0.8))
        mouth = 135 + m[1, 2]
        below = np.clip((ys - mouth) / 20, 0, 1) * np.clip((mouth + 60 - ys) / 60, 0, 1)
        weight = (below * np.exp(-(((xs - 160) / 45) ** 2))).astype(np.float32)
        source_y = (ys - opening * weight).astype(np.float32)
        frame = cv2.remap(frame, xs, source_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        writer.write(frame)
    writer.close()


if __name__ == "__main__":
    main()
