"""Getting the official weights from the Hub (engine/core/hub.py, `avatarbench weights`), against a stand-in Hub the
test starts on 127.0.0.1 (tests/hub_standin.py): the list with sizes first, progress with the total, the licence
accepted before Wav2Lip's files, a stopped download continued with a Range request, whole sets placed only when every
file is checked, offline and unreachable refusals that say what to place where, one download at a time, and the files
where the engines look for them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from hub_standin import StandInHub, random_bytes, running_hub

from engine.core.errors import InputError
from engine.core.hub import (
    LIVEPORTRAIT,
    WAV2LIP_S3FD,
    download,
    get_weights,
    inventory,
    list_files,
    one_download_at_a_time,
    partial_path,
    size_text,
)
from engine.core.settings import Settings
from engine.core.weights import S3FD, WAV2LIP, WeightsError, resolve, server_files

ROOT = Path(__file__).resolve().parent.parent

LIVEPORTRAIT_FILES = {  # the Hub's layout, with sizes scaled down and decoys the engine does not need
    "liveportrait/base_models/appearance_feature_extractor.pth": random_bytes(3_390, 1),
    "liveportrait/base_models/motion_extractor.pth": random_bytes(113_000, 2),
    "liveportrait/base_models/spade_generator.pth": random_bytes(222_000, 3),
    "liveportrait/base_models/warping_module.pth": random_bytes(182_000, 4),
    "liveportrait/retargeting_models/stitching_retargeting_module.pth": random_bytes(912, 5),
    "liveportrait/landmark.onnx": random_bytes(115_000, 6),
    "liveportrait_animals/base_models/motion_extractor.pth": random_bytes(1_000, 7),
    "insightface/models/buffalo_l/2d106det.onnx": random_bytes(1_000, 8),
    "README.md": b"# LivePortrait\n",
}
WAV2LIP_FILES = {  # camenduru/Wav2Lip's layout: the checkpoints folder of the Wav2Lip repository
    "checkpoints/wav2lip_gan.pth": random_bytes(436_000, 9),
    "checkpoints/wav2lip.pth": random_bytes(435_000, 10),
    "checkpoints/s3fd-619a316812.pth": random_bytes(89_000, 11),
    "checkpoints/README.md": b"Place all your checkpoints (.pth files) here.",
    "inference.py": b"print('not ours')\n",
}


@pytest.fixture
def hub() -> Iterator[StandInHub]:
    with running_hub() as standin:
        standin.add(LIVEPORTRAIT.repo, dict(LIVEPORTRAIT_FILES))
        standin.add(WAV2LIP_S3FD.repo, dict(WAV2LIP_FILES))
        standin.add("mirror/Wav2Lip", {"wav2lip_gan.pth": random_bytes(2000, 20), "s3fd.pth": random_bytes(900, 21)})
        yield standin


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")


def _recorder() -> tuple[list[tuple[float, str]], object]:
    calls: list[tuple[float, str]] = []
    return calls, lambda fraction, label: calls.append((fraction, label))


def test_liveportrait_lands_where_the_engine_looks(hub: StandInHub, settings: Settings) -> None:
    from engine.portrait.weights import weights_folder

    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    wanted = [p for p in LIVEPORTRAIT_FILES if p.startswith("liveportrait/")]
    assert sorted(f.path for f in plan.files) == sorted(wanted)  # what the Hub lists, filtered by the patterns
    assert plan.total_bytes == sum(len(LIVEPORTRAIT_FILES[p]) for p in wanted)
    assert size_text(plan.total_bytes) in plan.describe().splitlines()[0]
    calls, progress = _recorder()
    fetched = get_weights("liveportrait", settings, progress=progress, endpoint=hub.url)
    folder = settings.weights_dir / "liveportrait"
    for path in wanted:
        assert (settings.weights_dir / path).read_bytes() == LIVEPORTRAIT_FILES[path]
    assert not (settings.weights_dir / "liveportrait_animals").exists()
    assert not hub.downloads("2d106det.onnx") and not hub.downloads("README.md")  # decoys never requested
    assert len(fetched.placed) == len(wanted) and not fetched.kept
    # the engines' own lookups find them
    assert weights_folder(None, settings) == folder
    assert "liveportrait" in server_files(settings)
    assert next(p for p in inventory(settings) if p.engine == "liveportrait").ready
    assert not (settings.weights_dir / ".downloads").exists()  # the staging folder goes once the set is placed
    # progress: fractions that only grow, to 1.0, each label with the total size
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    total = size_text(plan.total_bytes)
    assert all(f"of {total}" in label for _, label in calls[:-1]) and len(calls) > len(wanted)
    # a second run fetches nothing
    requests = len(hub.requests)
    again = get_weights("liveportrait", settings, endpoint=hub.url)
    assert not again.placed and len(again.kept) == len(wanted)
    assert [r.path.split("?")[0] for r in hub.requests[requests:]] == [f"/api/models/{LIVEPORTRAIT.repo}"]


def test_wav2lip_needs_its_licence_accepted(hub: StandInHub, settings: Settings) -> None:
    with pytest.raises(InputError) as refused:
        get_weights("wav2lip", settings, endpoint=hub.url)
    message = str(refused.value)
    assert "non-commercial" in message and "--accept-licence" in message and "\n" not in message
    assert hub.requests == []  # refused before anything reached the network
    plan = list_files(WAV2LIP_S3FD, settings, endpoint=hub.url)
    with pytest.raises(InputError, match="non-commercial"):
        download(plan, settings)  # the download itself checks too
    fetched = get_weights("wav2lip", settings, accept_licence=True, endpoint=hub.url)
    gan, s3fd = settings.weights_dir / "wav2lip_gan.pth", settings.weights_dir / "s3fd-619a316812.pth"
    assert gan.read_bytes() == WAV2LIP_FILES["checkpoints/wav2lip_gan.pth"]
    assert s3fd.read_bytes() == WAV2LIP_FILES["checkpoints/s3fd-619a316812.pth"]
    assert sorted(fetched.placed) == sorted([gan, s3fd])
    assert not hub.downloads("checkpoints/wav2lip.pth")  # one generator: the preferred name
    assert resolve(WAV2LIP, settings) == gan and resolve(S3FD, settings) == s3fd  # where the lip-sync engine looks


def test_a_download_says_when_a_setting_points_the_engine_at_another_file(hub: StandInHub, settings: Settings) -> None:
    """With AVATARBENCH_WAV2LIP_CHECKPOINT set, the files downloaded are not what a run loads: the summary says so."""
    import dataclasses

    elsewhere = dataclasses.replace(settings, wav2lip_checkpoint=str(settings.data_dir / "mine.pth"))
    fetched = get_weights("wav2lip", elsewhere, accept_licence=True, endpoint=hub.url)
    assert fetched.notes == [
        "note: AVATARBENCH_WAV2LIP_CHECKPOINT is set, so the engine uses that file, not this download"
    ]
    assert fetched.notes[0] in fetched.summary()


def test_a_cut_short_file_in_place_is_fetched_again_and_the_other_generator_is_no_stand_in(
    hub: StandInHub, settings: Settings
) -> None:
    """A wav2lip_gan.pth a stopped browser download left is not "already in place"; nor does wav2lip.pth, a different
    model that happens to be there whole, take the GAN generator's place (only formats of one file stand in)."""
    gan = settings.weights_dir / "wav2lip_gan.pth"
    gan.parent.mkdir(parents=True)
    gan.write_bytes(WAV2LIP_FILES["checkpoints/wav2lip_gan.pth"][:1_000])
    (settings.weights_dir / "wav2lip.pth").write_bytes(WAV2LIP_FILES["checkpoints/wav2lip.pth"])
    fetched = get_weights("wav2lip", settings, accept_licence=True, endpoint=hub.url)
    assert gan in fetched.placed and gan.read_bytes() == WAV2LIP_FILES["checkpoints/wav2lip_gan.pth"]


def test_a_partial_download_continues_with_a_range_request(hub: StandInHub, settings: Settings) -> None:
    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    big = next(f for f in plan.files if f.path.endswith("spade_generator.pth"))
    data = LIVEPORTRAIT_FILES[big.path]
    part = partial_path(settings, plan, big)
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:150_000])  # what an earlier, interrupted run left
    calls, progress = _recorder()
    download(plan, settings, progress)
    (request,) = hub.downloads(big.path)
    assert request.range == "bytes=150000-" and request.sent == len(data) - 150_000  # only the rest was sent
    assert big.target.read_bytes() == data
    assert calls[0][0] > 0  # the kept bytes count as done from the start


def test_a_dropped_connection_keeps_the_partial_and_places_nothing(hub: StandInHub, settings: Settings) -> None:
    hub.cut_after["liveportrait/base_models/warping_module.pth"] = 50_000
    with pytest.raises(WeightsError, match="run it again to continue") as stopped:
        get_weights("liveportrait", settings, endpoint=hub.url)
    assert "\n" not in str(stopped.value)
    assert not (settings.weights_dir / "liveportrait").exists()  # no half set where the engine looks
    assert server_files(settings) == {}
    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    warping = next(f for f in plan.files if f.path.endswith("warping_module.pth"))
    assert partial_path(settings, plan, warping).stat().st_size == 50_000
    before = {f.path: len(hub.downloads(f.path)) for f in plan.files}
    get_weights("liveportrait", settings, endpoint=hub.url)
    assert hub.downloads(warping.path)[-1].range == "bytes=50000-"
    assert warping.target.read_bytes() == LIVEPORTRAIT_FILES[warping.path]
    finished_first_time = [p for p, n in before.items() if n and p != warping.path]
    assert finished_first_time and all(len(hub.downloads(p)) == before[p] for p in finished_first_time)


def test_a_partial_of_an_older_version_is_not_continued_into_the_new_one(hub: StandInHub, settings: Settings) -> None:
    """The Hub's file changed between two runs (same name, same size): its partial is named by content, so the new
    file starts afresh rather than being spliced onto the old one's first bytes (which fails the hash: a lost run)."""
    path = "liveportrait/landmark.onnx"
    old = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    part = partial_path(settings, old, next(f for f in old.files if f.path == path))
    part.parent.mkdir(parents=True)
    part.write_bytes(LIVEPORTRAIT_FILES[path][:50_000])
    new = random_bytes(len(LIVEPORTRAIT_FILES[path]), 60)
    hub.repos[LIVEPORTRAIT.repo][path] = new
    get_weights("liveportrait", settings, endpoint=hub.url)
    assert (settings.weights_dir / path).read_bytes() == new


def test_a_download_the_disk_cannot_hold_is_refused_before_a_byte(
    hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is still to fetch (the bytes of partial files count as fetched) against the free space: refused at once,
    naming both, rather than filling the disk mid-set."""
    from types import SimpleNamespace

    import engine.core.hub

    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    spade = next(f for f in plan.files if f.path.endswith("spade_generator.pth"))
    part = partial_path(settings, plan, spade)
    part.parent.mkdir(parents=True)
    part.write_bytes(LIVEPORTRAIT_FILES[spade.path][:150_000])
    to_fetch = plan.total_bytes - 150_000
    monkeypatch.setattr(engine.core.hub.shutil, "disk_usage", lambda path: SimpleNamespace(free=to_fetch - 1))
    with pytest.raises(WeightsError, match=rf"^{size_text(to_fetch)} to fetch but {size_text(to_fetch - 1)} free"):
        download(plan, settings)
    assert not [r for r in hub.requests if "/resolve/" in r.path]
    monkeypatch.setattr(engine.core.hub.shutil, "disk_usage", lambda path: SimpleNamespace(free=to_fetch))
    download(plan, settings)
    assert spade.target.read_bytes() == LIVEPORTRAIT_FILES[spade.path]


def test_a_corrupt_partial_is_caught_by_the_hash(hub: StandInHub, settings: Settings) -> None:
    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    landmark = next(f for f in plan.files if f.path.endswith("landmark.onnx"))
    part = partial_path(settings, plan, landmark)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)
    with pytest.raises(WeightsError, match="does not match the Hub's hash"):
        download(plan, settings)
    assert not part.exists() and not landmark.target.exists()
    download(plan, settings)  # the next run starts that file over
    assert landmark.target.read_bytes() == LIVEPORTRAIT_FILES[landmark.path]


def test_a_partial_longer_than_the_file_starts_over(hub: StandInHub, settings: Settings) -> None:
    """No Range request can continue a partial already past the file's end: it is dropped and fetched whole."""
    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    landmark = next(f for f in plan.files if f.path.endswith("landmark.onnx"))
    part = partial_path(settings, plan, landmark)
    part.parent.mkdir(parents=True)
    part.write_bytes(LIVEPORTRAIT_FILES[landmark.path] + b"\0" * 100)
    download(plan, settings)
    assert landmark.target.read_bytes() == LIVEPORTRAIT_FILES[landmark.path]
    assert hub.downloads(landmark.path)[-1].range is None


def test_a_server_that_ignores_range_starts_the_file_over(hub: StandInHub, settings: Settings) -> None:
    hub.ignore_range = True
    plan = list_files(LIVEPORTRAIT, settings, endpoint=hub.url)
    motion = next(f for f in plan.files if f.path.endswith("motion_extractor.pth"))
    part = partial_path(settings, plan, motion)
    part.parent.mkdir(parents=True)
    part.write_bytes(LIVEPORTRAIT_FILES[motion.path][:1000])
    download(plan, settings)
    assert motion.target.read_bytes() == LIVEPORTRAIT_FILES[motion.path]


def test_offline_or_unreachable_says_what_to_place_where(
    hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as offline:
        get_weights("wav2lip", settings, accept_licence=True, endpoint=hub.url)
    text = str(offline.value)
    assert "HF_HUB_OFFLINE" in text and "\n" not in text
    assert f"at {settings.weights_dir / 'wav2lip_gan.pth'}" in text and "s3fd.pth" in text
    with pytest.raises(WeightsError, match="liveportrait/base_models") as lp:
        get_weights("liveportrait", settings, endpoint=hub.url)
    assert str(settings.weights_dir) in str(lp.value)
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsError, match="the Hub is unreachable") as unreachable:
        get_weights("liveportrait", settings, endpoint=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert "\n" not in str(unreachable.value) and "liveportrait/landmark.onnx" in str(unreachable.value)


@pytest.mark.parametrize(
    ("variable", "value"), [("HF_HUB_OFFLINE", "true"), ("HF_HUB_OFFLINE", " Yes "), ("TRANSFORMERS_OFFLINE", "1")]
)
def test_every_spelling_of_offline_keeps_downloads_off_the_network(
    hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """huggingface_hub accepts 1/ON/YES/TRUE in any case, and transformers' own variable; set after it was imported,
    each must still stop a download before its first request."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set, so nothing is downloaded"):
        get_weights("liveportrait", settings, endpoint=hub.url)
    assert hub.requests == []


def test_offline_as_huggingface_hub_read_it_at_import_counts_too(
    hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE set when the process started and gone from the environment since (a launcher that cleans it)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set, so nothing is downloaded"):
        get_weights("liveportrait", settings, endpoint=hub.url)
    assert hub.requests == []


def test_an_hf_reference_not_cached_fails_at_once_offline_or_unreachable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--checkpoint hf:OWNER/REPO/FILE` with no network waited out huggingface_hub's retries (about 26 s) before
    its error; now one quick listing says the Hub is unreachable (and HF_HUB_OFFLINE is said at once)."""
    import huggingface_hub.constants

    from engine.core.weights import hub_download

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nobody there
    with pytest.raises(WeightsError, match=r"wav2lip\.pth of someone/w2l is not in the Hub's local cache and the Hub "
                                           "is unreachable"):  # fmt: skip
        hub_download("hf:someone/w2l/wav2lip.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="is not in the Hub's local cache and HF_HUB_OFFLINE is set"):
        hub_download("hf:someone/w2l/wav2lip.pth")


@pytest.mark.parametrize("reference", ["hf:foo", "hf:owner/repo", "hf:owner/repo/", "hf://file.pth"])
def test_an_hf_reference_of_another_shape_is_bad_input(reference: str, tmp_path: Path, capsys) -> None:
    """It exited 3, as if the machine lacked something, for what the user typed (and gave no example)."""
    from engine.cli import main

    media = ["--face", str(ROOT / "assets" / "face.jpg"), "--audio", str(ROOT / "assets" / "speech.wav")]
    assert main(["lipsync", *media, "--out", str(tmp_path / "o.mp4"), "--quiet", "--checkpoint", reference]) == 2
    assert capsys.readouterr().err == (f"avatarbench: {reference!r} is not hf:OWNER/REPO/PATH/TO/FILE, e.g. "
                                       "hf:camenduru/Wav2Lip/checkpoints/wav2lip_gan.pth\n")  # fmt: skip


def test_an_hf_reference_splits_into_repository_and_path_before_any_download() -> None:
    """An empty part (a doubled slash) is a typo said at once, not a repository "owner/" asked of the Hub; slashes
    around the whole reference are forgiven."""
    from engine.core.weights import hub_reference

    assert hub_reference("hf:/owner/repo/checkpoints/wav2lip_gan.pth/") == ("owner/repo", "checkpoints/wav2lip_gan.pth")
    for typo in ("hf:owner//wav2lip_gan.pth", "hf:owner/repo//wav2lip_gan.pth"):
        with pytest.raises(InputError, match="is not hf:OWNER/REPO/PATH/TO/FILE"):
            hub_reference(typo)


def test_either_http_clients_failures_are_network_failures() -> None:
    """huggingface_hub 2 raises httpx2's errors and 1.x httpx's; both must become the one-line message above. (The
    test above drives the pinned library; with huggingface_hub 1.33, as on a CUDA image, it passed too.)"""
    import httpx
    import httpx2

    from engine.core import hub

    caught = hub._network_errors()
    assert OSError in caught
    assert issubclass(httpx.ConnectError, caught) and issubclass(httpx.RemoteProtocolError, caught)
    assert issubclass(httpx2.ConnectError, caught)


def test_repositories_that_cannot_serve(hub: StandInHub, settings: Settings) -> None:
    for bad in ("../etc", "owner/a..b"):  # the Hub refuses ".." in a name: said before asking it
        with pytest.raises(InputError, match="not OWNER/NAME"):
            get_weights("liveportrait", settings, repo=bad, endpoint=hub.url)
    with pytest.raises(InputError, match="no public model repository no/such"):
        get_weights("liveportrait", settings, repo="no/such", endpoint=hub.url)
    hub.add("someone/partial", {"checkpoints/wav2lip_gan.pth": random_bytes(100, 12)})
    with pytest.raises(WeightsError, match=r"has no s3fd\.pth or s3fd-619a316812\.pth"):
        get_weights("wav2lip", settings, repo="someone/partial", accept_licence=True, endpoint=hub.url)
    hub.add("someone/no-landmarks", {p: d for p, d in LIVEPORTRAIT_FILES.items() if not p.endswith(".onnx")})
    with pytest.raises(WeightsError, match=r"someone/no-landmarks has no liveportrait/landmark\.onnx; give a"):
        get_weights("liveportrait", settings, repo="someone/no-landmarks", endpoint=hub.url)  # not a set short of it
    with pytest.raises(InputError, match="no weights called 'sadtalker'; accepted: liveportrait, wav2lip, musetalk"):
        get_weights("sadtalker", settings)
    assert not settings.weights_dir.exists() or server_files(settings) == {}


def test_a_gated_repository_says_to_accept_its_terms_not_that_it_is_missing(
    hub: StandInHub, settings: Settings
) -> None:
    """huggingface_hub's GatedRepoError is a RepositoryNotFoundError: caught as that, a gated copy read as "no public
    model repository", and the user never learnt that accepting its terms and a token would do."""
    hub.gated.add(LIVEPORTRAIT.repo)
    with pytest.raises(WeightsError) as gated:
        get_weights("liveportrait", settings, endpoint=hub.url)
    text = str(gated.value)
    assert text.startswith(f"{LIVEPORTRAIT.repo} is gated: accept its terms at {hub.url}/{LIVEPORTRAIT.repo} and set ")
    assert "HF_TOKEN" in text and "liveportrait/landmark.onnx" in text and "\n" not in text


def test_a_hub_that_answers_with_an_error_says_so_and_how_to_do_without_it(hub: StandInHub, settings: Settings) -> None:
    """A 503 while listing (the Hub busy or down) is neither a missing repository nor an unreachable Hub: the status
    and a retry, with what to place where meanwhile."""
    hub.failing[LIVEPORTRAIT.repo] = 503
    with pytest.raises(WeightsError) as failing:
        get_weights("liveportrait", settings, endpoint=hub.url)
    text = str(failing.value)
    assert text.startswith(f"the Hub answered 503 listing {LIVEPORTRAIT.repo}; try again later, or ")
    assert "liveportrait/landmark.onnx" in text and "\n" not in text
    assert not settings.weights_dir.exists() or server_files(settings) == {}


def test_a_model_found_at_two_depths_comes_from_the_shallowest(hub: StandInHub, settings: Settings) -> None:
    """A copy that keeps an older generator in a subfolder ("old/" sorts before "wav2lip_gan.pth"): the file at the
    top is the one fetched."""
    top, old = random_bytes(1_500, 51), random_bytes(1_400, 52)
    hub.add("someone/Wav2Lip", {"old/wav2lip_gan.pth": old, "wav2lip_gan.pth": top, "s3fd.pth": random_bytes(900, 53)})
    get_weights("wav2lip", settings, repo="someone/Wav2Lip", accept_licence=True, endpoint=hub.url)
    assert (settings.weights_dir / "wav2lip_gan.pth").read_bytes() == top and not hub.downloads("old/wav2lip_gan.pth")


def test_a_listed_path_that_climbs_out_of_the_weights_folder_is_refused(hub: StandInHub, settings: Settings) -> None:
    """An operator's repository is anyone's: a name with ../ in it matches `base_models/*.pth` (fnmatch's * crosses
    slashes) and must not write beside the weights folder."""
    hub.add("someone/LivePortrait", {**LIVEPORTRAIT_FILES, "liveportrait/base_models/../../../escaped.pth": b"x"})
    with pytest.raises(WeightsError, match=r"escaped\.pth in someone/LivePortrait would land outside the weights"):
        get_weights("liveportrait", settings, repo="someone/LivePortrait", endpoint=hub.url)
    assert not [r for r in hub.requests if "/resolve/" in r.path]
    assert not (settings.weights_dir.parent / "escaped.pth").exists()


def test_one_download_at_a_time(hub: StandInHub, settings: Settings) -> None:
    from filelock import FileLock

    with one_download_at_a_time(settings), pytest.raises(WeightsError, match="another weights download"):
        get_weights("liveportrait", settings, endpoint=hub.url)  # this process
    with FileLock(settings.weights_dir / ".downloads.lock"), pytest.raises(WeightsError, match="another weights"):
        get_weights("liveportrait", settings, endpoint=hub.url)  # another process holds the lock file
    get_weights("liveportrait", settings, endpoint=hub.url)  # free again


def test_hf_endpoint_is_honoured(hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads HF_ENDPOINT when imported: its constants are what a fresh process would have."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    get_weights("wav2lip", settings, accept_licence=True)
    assert (settings.weights_dir / "wav2lip_gan.pth").is_file() and hub.downloads("wav2lip_gan.pth")


def _cli(*args: str, hub: StandInHub, data: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_ENDPOINT": hub.url, "AVATARBENCH_DATA_DIR": str(data),
                   "HF_HUB_CACHE": str(data / "hub-cache"), **env}  # fmt: skip
    environment.pop("HF_HUB_OFFLINE", None) if "HF_HUB_OFFLINE" not in env else None
    return subprocess.run([sys.executable, "-m", "engine", "weights", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=environment, check=False)  # fmt: skip


def test_the_command_line(hub: StandInHub, tmp_path: Path) -> None:
    refused = _cli("get", "wav2lip", "--quiet", hub=hub, data=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "non-commercial" in refused.stderr
    offline = _cli("get", "liveportrait", "--quiet", hub=hub, data=tmp_path, HF_HUB_OFFLINE="1")
    assert offline.returncode == 3 and offline.stderr.count("\n") == 1 and "liveportrait/base_models" in offline.stderr
    assert hub.requests == []
    got = _cli("get", "liveportrait", hub=hub, data=tmp_path)
    assert got.returncode == 0, got.stderr
    listing = got.stdout.splitlines()
    assert "6 files" in listing[0] and size_text(sum(len(v) for k, v in LIVEPORTRAIT_FILES.items()
                                                     if k.startswith("liveportrait/"))) in listing[0]  # fmt: skip
    assert any("motion_extractor.pth" in line and "to fetch" in line for line in listing)
    assert "6 file(s) placed" in got.stdout and "100.0%" in got.stderr  # the bar reached the end
    wav2lip = _cli("get", "wav2lip", "--accept-licence", "--quiet", hub=hub, data=tmp_path)
    assert wav2lip.returncode == 0, wav2lip.stderr
    status = _cli("list", hub=hub, data=tmp_path)
    assert status.returncode == 0
    assert [line.split()[:2] for line in status.stdout.splitlines()[1:4]] == [
        ["liveportrait", "ready"], ["wav2lip", "ready"], ["s3fd", "ready"]]  # fmt: skip


def test_a_weights_folder_that_cannot_exist_is_said_not_advised_into(hub: StandInHub, tmp_path: Path) -> None:
    """With a file on the folder's path, `list` advised putting the weights at /dev/null/x/... and exited 0, and
    `get` asked the Hub before failing."""
    (tmp_path / "file").write_text("")
    bad = {"AVATARBENCH_WEIGHTS_DIR": str(tmp_path / "file" / "weights")}
    listed = _cli("list", hub=hub, data=tmp_path, **bad)
    assert listed.returncode == 2 and "put " not in listed.stdout
    assert listed.stderr == (f"avatarbench: the weights folder cannot be made ({tmp_path / 'file'} is not a folder): "
                             "set AVATARBENCH_WEIGHTS_DIR (or AVATARBENCH_DATA_DIR, whose weights/ it defaults to) "
                             "to a folder\n")  # fmt: skip
    got = _cli("get", "liveportrait", "--quiet", hub=hub, data=tmp_path, **bad)
    assert got.returncode == 2 and "cannot create the folder" in got.stderr and "AVATARBENCH_WEIGHTS_DIR" in got.stderr
    assert hub.requests == []
    fresh = _cli("list", hub=hub, data=tmp_path, AVATARBENCH_WEIGHTS_DIR=str(tmp_path / "not" / "yet"))
    assert fresh.returncode == 0 and "put " in fresh.stdout and not (tmp_path / "not").exists()  # listing makes none


def test_a_weights_path_that_is_a_folder_or_missing_says_which_and_where_it_was_set(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights", wav2lip_checkpoint=str(folder))
    with pytest.raises(WeightsError, match=r"ckpts \(set by AVATARBENCH_WAV2LIP_CHECKPOINT\) is a folder, not a file"):
        resolve(WAV2LIP, settings)
    with pytest.raises(WeightsError, match=r"gone\.pth does not exist; expected"):
        resolve(S3FD, settings, tmp_path / "gone.pth")  # given on the command line: no variable to name


def test_a_model_file_is_the_path_given_then_the_setting_then_the_weights_folder(tmp_path: Path) -> None:
    """The order a user relies on: `--checkpoint` beats AVATARBENCH_*_CHECKPOINT, which beats the weights folder; in
    the folder the preferred name (wav2lip_gan.pth) wins wherever it lies, at the top or in the engine's subfolder."""
    weights = tmp_path / "weights"
    (weights / "wav2lip").mkdir(parents=True)
    (weights / "s3fd").mkdir()
    for path in (weights / "wav2lip.pth", weights / "wav2lip" / "wav2lip_gan.pth", weights / "s3fd" / "s3fd.pth"):
        path.write_bytes(b"weights")
    given, from_setting = tmp_path / "given.pth", tmp_path / "set.pth"
    given.write_bytes(b"given")
    from_setting.write_bytes(b"setting")
    plain = Settings(data_dir=tmp_path, weights_dir=weights)
    assert resolve(WAV2LIP, plain) == weights / "wav2lip" / "wav2lip_gan.pth"  # the GAN generator, not the other
    assert resolve(S3FD, plain) == weights / "s3fd" / "s3fd.pth"
    configured = Settings(data_dir=tmp_path, weights_dir=weights, s3fd_checkpoint=str(from_setting))
    assert resolve(S3FD, configured) == from_setting
    assert resolve(S3FD, configured, given) == given


def test_a_missing_model_file_is_said_with_the_path_it_goes_to_and_its_setting(tmp_path: Path) -> None:
    """The sentence the lip-sync tab and errors show: the full path to put the file at, not only the folder, and
    the command that downloads it (the set both files come in)."""
    from engine.core.hub import where_to_put

    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")
    for model, name in ((WAV2LIP, "wav2lip_gan.pth"), (S3FD, "s3fd.pth")):
        text = where_to_put(model, settings)
        assert (
            f" at {settings.weights_dir / name}, or set AVATARBENCH_{model.key.upper()} to its path "
            "(`avatarbench weights get wav2lip --accept-licence`, or the app's Get the official weights panel, "
            "downloads it)." in text
        )


def test_the_server_offers_its_model_files_and_weight_folders_by_name(tmp_path: Path) -> None:
    """What a visitor may pick: .pth, .pt and .onnx files and the folders an engine takes whole, by their path under
    the weights folder; nothing else there (notes, configs) is offered."""
    weights = tmp_path / "weights"
    for name in ("wav2lip_gan.pth", "mine/wav2lip.pt", "det/face.onnx", "notes.txt", "mine/config.json",
                 "lp/base_models/warping_module.pth", "mt/musetalkV15/unet.pth"):  # fmt: skip
        (weights / name).parent.mkdir(parents=True, exist_ok=True)
        (weights / name).write_bytes(b"x")
    offered = server_files(Settings(data_dir=tmp_path, weights_dir=weights))
    assert set(offered) == {"wav2lip_gan.pth", "mine/wav2lip.pt", "det/face.onnx", "lp",
                            "lp/base_models/warping_module.pth", "mt", "mt/musetalkV15/unet.pth"}  # fmt: skip
    assert offered["mine/wav2lip.pt"] == weights / "mine" / "wav2lip.pt"


def test_the_listing_looks_in_the_liveportrait_folder_the_setting_names(tmp_path: Path) -> None:
    """`weights list` said "missing" of LivePortrait weights that AVATARBENCH_LIVEPORTRAIT_DIR points a run at."""
    folder = tmp_path / "elsewhere"
    for name in LIVEPORTRAIT_FILES:
        if name.startswith("liveportrait/") and name.endswith(".pth"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(random_bytes(100, 1))
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights", liveportrait_dir=str(folder))
    listed = next(p for p in inventory(settings) if p.engine == "liveportrait")
    assert listed.ready and listed.found == folder / "liveportrait"


def test_a_download_cut_short_or_a_page_saved_with_a_bom_is_broken_not_ready(tmp_path: Path) -> None:
    """A zip (torch's format) cut before its end record, as a stopped browser download leaves it, and a login page
    saved with a UTF-8 byte-order mark cannot load: the listing says so before a run fails on them."""
    import io
    import zipfile

    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("archive/data/0", random_bytes(20_000, 50))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "wav2lip_gan.pth").write_bytes(whole.getvalue()[:10_000])
    (weights / "s3fd.pth").write_bytes(b"\xef\xbb\xbf<!DOCTYPE html><html><body>Sign in</body></html>")
    listed = {p.engine: p for p in inventory(Settings(data_dir=tmp_path, weights_dir=weights))}
    assert listed["wav2lip"].state == "broken" and "the file is truncated" in listed["wav2lip"].broken[0]
    assert listed["s3fd"].state == "broken" and "this is a web page" in listed["s3fd"].broken[0]


def test_files_that_cannot_be_weights_are_listed_as_broken_not_ready(tmp_path: Path) -> None:
    """A login page saved as wav2lip_gan.pth, an empty s3fd.pth and a Git LFS pointer among LivePortrait's files were
    "ready" (only the run refused them); `weights list` says which file cannot load and why, and the command that
    fetches it again."""
    weights = tmp_path / "weights"
    for name in LIVEPORTRAIT_FILES:
        if name.startswith("liveportrait/") and name.endswith(".pth"):
            (weights / name).parent.mkdir(parents=True, exist_ok=True)
            (weights / name).write_bytes(random_bytes(100, 1))
    (weights / "liveportrait/base_models/warping_module.pth").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 182000\n"
    )
    (weights / "wav2lip_gan.pth").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    (weights / "s3fd.pth").write_bytes(b"")
    listed = subprocess.run([sys.executable, "-m", "engine", "weights", "list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "AVATARBENCH_DATA_DIR": str(tmp_path)},
                            check=False)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:] if not line.startswith(" ")][:3] == [
        ["liveportrait", "broken"], ["wav2lip", "broken"], ["s3fd", "broken"]]  # fmt: skip
    assert any("cannot load base_models/warping_module.pth: this is a Git LFS pointer" in line for line in lines)
    assert any("cannot load wav2lip_gan.pth: this is a web page (48 bytes)" in line for line in lines)
    assert any("cannot load s3fd.pth: the file is empty (0 bytes)" in line for line in lines)
    command = "Wav2Lip and S3FD: `avatarbench weights get wav2lip --accept-licence`"
    assert any(line.startswith(command) for line in lines)
