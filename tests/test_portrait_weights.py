"""Where the LivePortrait weights come from (a folder, the Hub's local cache, an explicit hf: reference) and
the cache of networks and sources that portrait runs share."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from engine.core.cache import LruCache, file_digest, file_stamp
from engine.core.settings import Settings
from engine.core.weights import WeightsError
from engine.portrait.config import PortraitConfig
from engine.portrait.weights import hub_weights, pick_engine, weights_folder

FACE = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"


def _five_files(folder: Path) -> Path:
    """The official file names (empty files: finding the folder opens none)."""
    from engine.models.liveportrait import WEIGHT_FILES

    for name in WEIGHT_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    return folder


def _hub_snapshot(cache: Path, repo: str = "KwaiVGI/LivePortrait") -> Path:
    """The Hub's cache layout with one snapshot that has liveportrait/base_models."""
    root = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    folder = _five_files(root / "snapshots" / revision / "liveportrait")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return folder


def test_weights_come_from_the_folder_then_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # nothing here may reach the network
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")
    with pytest.raises(WeightsError, match="hf:KwaiVGI/LivePortrait"):
        weights_folder(None, settings)  # nothing anywhere: the message says where to put them
    assert hub_weights("hf:KwaiVGI/LivePortrait", download=False) is None
    cached = _hub_snapshot(tmp_path / "hub")
    assert weights_folder(None, settings) == cached  # found in the Hub's cache, without the network
    local = tmp_path / "weights" / "liveportrait"
    (local / "base_models").mkdir(parents=True)
    with pytest.raises(WeightsError, match=r"liveportrait lacks 5 of LivePortrait's 5 weight files: base_models/app"):
        weights_folder(None, settings)  # a local folder wins, and all it lacks is said at once
    (_five_files(local) / "base_models" / "warping_module.pth").unlink()
    with pytest.raises(
        WeightsError, match=r"lacks 1 of LivePortrait's 5 weight files: base_models/warping_module\.pth"
    ):
        weights_folder(None, settings)
    _five_files(local)
    assert weights_folder(None, settings) == local
    with pytest.raises(WeightsError, match="no LivePortrait weights"):
        weights_folder(str(tmp_path / "nowhere"), settings)  # a folder named explicitly is never replaced by another
    with pytest.raises(WeightsError, match=r"face\.jpg is a file: the LivePortrait weights are a folder"):
        weights_folder(str(FACE), settings)
    with pytest.raises(WeightsError, match="could not fetch") as caught:
        weights_folder("hf:Someone/Else", settings)
    assert "\n" not in str(caught.value)  # the Hub's own text ran over two lines


def test_the_folder_as_downloaded_and_its_liveportrait_subfolder(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")
    root = tmp_path / "pretrained_weights"  # the Hub's layout: liveportrait/, liveportrait_animals/, insightface/
    _five_files(root / "liveportrait")
    (root / "insightface").mkdir()
    for given in (root, root / "liveportrait"):
        config = PortraitConfig(FACE, FACE, weights=str(given))
        assert weights_folder(config.weights, settings) == root / "liveportrait"
        assert pick_engine(config, settings) == ("liveportrait", root / "liveportrait")
    from_setting = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights", liveportrait_dir=str(root))
    assert weights_folder(None, from_setting) == root / "liveportrait"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match=r"no LivePortrait weights in .*empty"):  # named, so never a fallback
        pick_engine(PortraitConfig(FACE, FACE, weights=str(empty)), settings)
    assert pick_engine(PortraitConfig(FACE, FACE), settings) == ("baseline", None)  # found nowhere: the baseline
    assert pick_engine(PortraitConfig(FACE, FACE, weights=str(empty), engine="baseline"), settings)[0] == "baseline"


def test_lru_cache_keeps_the_most_recent_and_builds_once() -> None:
    cache, built = LruCache(2), []

    def build(value: str):
        return lambda: built.append(value) or value

    assert cache.get_or_build("a", build("A")) == ("A", False)
    assert cache.get_or_build("a", build("A2")) == ("A", True)
    cache.get_or_build("b", build("B"))
    cache.get_or_build("a", build("A3"))  # a is now the most recent
    cache.get_or_build("c", build("C"))  # evicts b
    assert cache.get_or_build("b", build("B2")) == ("B2", False)
    assert built == ["A", "B", "C", "B2"] and len(cache) == 2
    threads = [threading.Thread(target=cache.get_or_build, args=("d", build("D"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built.count("D") == 1
    cache.clear()
    assert len(cache) == 0


def test_file_digest_is_about_the_bytes(tmp_path: Path) -> None:
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(FACE.read_bytes())
    assert file_digest(copy) == file_digest(FACE)
    copy.write_bytes(FACE.read_bytes() + b"x")
    assert file_digest(copy) != file_digest(FACE)


def test_a_files_digest_and_stamp_see_every_change(tmp_path: Path) -> None:
    """Two uploads alike in their first MiB (the digest's read block) are two sources; a weights file replaced within
    the same second by one of the same size is a new file to load (its stamp's time is in nanoseconds)."""
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(bytes(2**20) + b"a")
    second.write_bytes(bytes(2**20) + b"b")
    assert file_digest(first) != file_digest(second)
    os.utime(first, ns=(10**18, 10**18))
    before = file_stamp(first)
    os.utime(first, ns=(10**18 + 1000, 10**18 + 1000))  # a microsecond later
    assert file_stamp(first) != before and file_stamp(first)[:2] == before[:2] == (str(first), 2**20 + 1)


def test_a_malformed_hub_reference_is_bad_input_not_a_failed_download(tmp_path: Path) -> None:
    """hf:a/b/c (or a bare name) is refused as input (exit 2) before any Hub call, for LivePortrait and MuseTalk."""
    from engine.core.errors import InputError
    from engine.lipsync.musetalk.weights import require

    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")
    for reference in ("hf:a/b/c", "hf:bad", "hf:../x"):
        with pytest.raises(InputError, match="is not OWNER/NAME"):
            hub_weights(reference, download=True)
        with pytest.raises(InputError, match="is not OWNER/NAME"):
            require(settings, reference, "v15", download=True)
