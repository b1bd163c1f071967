"""engine/core/words.py: counts, sizes and lists read the same in every message."""

from __future__ import annotations

from engine.core.words import counted, format_bytes, listed


def test_one_is_singular_and_the_rest_plural() -> None:
    assert [counted(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]
    assert counted(3, "face box") == "3 face boxes" and counted(1, "face box") == "1 face box"
    assert [counted(2, noun) for noun in ("batch", "mesh", "pass")] == ["2 batches", "2 meshes", "2 passes"]


def test_sizes_in_binary_units() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 12 * 2**20, 1536 * 2**20, 3 * 2**30)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "12.0 MiB", "1.5 GiB", "3.0 GiB"
    ]  # fmt: skip


def test_a_list_reads_as_a_sentence_does() -> None:
    assert [listed(items) for items in ([], ["roll"], ["scale", "place"], ["roll", "scale", "place"])] == [
        "", "roll", "scale and place", "roll, scale and place"
    ]  # fmt: skip
