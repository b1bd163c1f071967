"""MuseTalk's weights as one download set from three Hugging Face repositories (engine/core/hub.py MUSETALK), against
a stand-in Hub the test starts on 127.0.0.1 (tests/hub_standin.py): every share listed with its target under
musetalk/, the set landing where MuseTalk's own finder (engine/lipsync/musetalk/weights.py `locate`) looks, the
face-parsing file named to place by hand, a stopped share continued, nothing placed while any share is incomplete or
fails, offline and unreachable lines naming every share, the panel (ui/weights.py) and the command line."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_downloads
from conftest import free_port
from hub_standin import COMMIT, StandInHub, random_bytes, running_hub

from engine.core.errors import InputError
from engine.core.hub import (
    FACE_PARSE_URL,
    MUSETALK,
    MUSETALK_V1,
    Presence,
    Source,
    download,
    get_weights,
    inventory,
    list_files,
    partial_path,
)
from engine.core.settings import Settings
from engine.core.weights import WeightsError, server_files
from engine.lipsync.musetalk.weights import UNET_CONFIG, V1, VAE_CONFIG, WHISPER_ENCODER_CONFIG, locate

settings = test_downloads.settings  # fixture: a weights folder of the test's own, the Hub cache empty and online

VAE, WHISPER = "stabilityai/sd-vae-ft-mse", "openai/whisper-tiny"
MUSETALK_FILES = {  # TMElyralab/MuseTalk's layout (both versions), sizes scaled down
    "musetalkV15/unet.pth": random_bytes(300_000, 31),
    "musetalkV15/musetalk.json": json.dumps(UNET_CONFIG).encode(),
    "musetalk/pytorch_model.bin": random_bytes(290_000, 32),
    "musetalk/musetalk.json": json.dumps(UNET_CONFIG).encode(),
    "README.md": b"# MuseTalk\n",
}
VAE_FILES = {  # both formats, as on the Hub; the safetensors one is preferred
    "config.json": json.dumps(VAE_CONFIG).encode(),
    "diffusion_pytorch_model.safetensors": random_bytes(120_000, 33),
    "diffusion_pytorch_model.bin": random_bytes(120_500, 34),
    "README.md": b"# sd-vae-ft-mse\n",
}
WHISPER_FILES = {
    "config.json": json.dumps(
        {**WHISPER_ENCODER_CONFIG, "architectures": ["WhisperForConditionalGeneration"]}
    ).encode(),
    "preprocessor_config.json": json.dumps({"feature_size": 80, "sampling_rate": 16000}).encode(),
    "model.safetensors": random_bytes(60_000, 35),
    "pytorch_model.bin": random_bytes(60_100, 36),
    "flax_model.msgpack": random_bytes(1_000, 37),
    "tokenizer.json": b"{}",
}
REPOS = {MUSETALK.repo: MUSETALK_FILES, VAE: VAE_FILES, WHISPER: WHISPER_FILES}
EXPECTED = {  # (repository, path there) -> place under the weights folder, as upstream's download_weights.sh lays it
    (MUSETALK.repo, "musetalkV15/unet.pth"): "musetalk/musetalkV15/unet.pth",
    (MUSETALK.repo, "musetalkV15/musetalk.json"): "musetalk/musetalkV15/musetalk.json",
    (VAE, "config.json"): "musetalk/sd-vae/config.json",
    (VAE, "diffusion_pytorch_model.safetensors"): "musetalk/sd-vae/diffusion_pytorch_model.safetensors",
    (WHISPER, "config.json"): "musetalk/whisper/config.json",
    (WHISPER, "preprocessor_config.json"): "musetalk/whisper/preprocessor_config.json",
    (WHISPER, "model.safetensors"): "musetalk/whisper/model.safetensors",
}
FACE_PARSE = "musetalk/face-parse-bisent/79999_iter.pth"
VISITOR = SimpleNamespace(username=None, session_hash="visitor")
OPERATORS = frozenset({"op"})


@pytest.fixture
def hub() -> Iterator[StandInHub]:
    with running_hub() as standin:
        for repo, files in REPOS.items():
            standin.add(repo, dict(files))
        yield standin


def _gets(hub: StandInHub, repo: str, path: str) -> list:
    """The requests for one file's bytes in one repository."""
    return hub.downloads(f"/{repo}/resolve/{COMMIT}/{path}")


def _placed(settings: Settings) -> dict[str, bytes]:
    folder = settings.weights_dir / "musetalk"
    return {p.relative_to(settings.weights_dir).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _presence(settings: Settings) -> Presence:
    return next(p for p in inventory(settings) if p.engine == "musetalk")


def test_the_set_lists_every_share_with_its_target(hub: StandInHub, settings: Settings) -> None:
    plan = list_files(MUSETALK, settings, endpoint=hub.url)
    got = {(f.repo, f.path): f.target.relative_to(settings.weights_dir.resolve()).as_posix() for f in plan.files}
    assert got == EXPECTED
    assert {f.revision for f in plan.files} == {COMMIT}
    assert plan.repos == ((MUSETALK.repo, COMMIT), (VAE, COMMIT), (WHISPER, COMMIT))
    assert plan.total_bytes == sum(len(REPOS[repo][path]) for repo, path in EXPECTED)
    text = plan.describe()
    assert all(f"from {repo}:" in text for repo in REPOS) and text.count("to fetch") == len(EXPECTED) + 1
    assert f"by hand (not on the Hub): {FACE_PARSE}  missing" in text and FACE_PARSE_URL in text
    assert [r.path.split("?")[0] for r in hub.requests] == [f"/api/models/{repo}" for repo in REPOS]  # listing only


def test_the_set_lands_where_musetalks_finder_looks(hub: StandInHub, settings: Settings) -> None:
    with pytest.raises(InputError, match="CreativeML OpenRAIL-M") as refused:
        get_weights("musetalk", settings, endpoint=hub.url)
    assert "--accept-licence" in str(refused.value) and hub.requests == []  # refused before the network
    calls: list[tuple[float, str]] = []
    fetched = get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url,
                          progress=lambda fraction, label: calls.append((fraction, label)))  # fmt: skip
    assert _placed(settings) == {place: REPOS[repo][path] for (repo, path), place in EXPECTED.items()}
    for repo, path in [
        (MUSETALK.repo, "musetalk/pytorch_model.bin"),
        (VAE, "diffusion_pytorch_model.bin"),
        (WHISPER, "pytorch_model.bin"),
        (WHISPER, "flax_model.msgpack"),
        (WHISPER, "tokenizer.json"),
    ]:
        assert not _gets(hub, repo, path)  # other versions and formats: never requested
    assert len(fetched.placed) == len(EXPECTED) and not fetched.kept
    assert any(FACE_PARSE in note and FACE_PARSE_URL in note for note in fetched.notes)
    assert calls[-1] == (1.0, "MuseTalk: all 7 files from the Hub in place; 79999_iter.pth to place by hand")
    assert not (settings.weights_dir / ".downloads").exists()
    # MuseTalk's own finder: everything but the face-parsing file, in the downloaded folder, safetensors preferred
    files = locate(settings)
    assert [p.name for p in files.missing] == ["face_parse"] and files.folder == settings.weights_dir / "musetalk"
    assert files["unet"] == settings.weights_dir / "musetalk/musetalkV15/unet.pth"
    assert files["vae_weights"].name == "diffusion_pytorch_model.safetensors"
    assert files["whisper_weights"].name == "model.safetensors"
    assert _presence(settings).missing == ("face-parse-bisent/79999_iter.pth",)
    assert (settings.weights_dir / FACE_PARSE).parent.is_dir()  # its folder is ready, as upstream's script makes it
    (settings.weights_dir / FACE_PARSE).write_bytes(random_bytes(1_000, 38))  # placed by hand
    files = locate(settings)
    assert files.complete and files["face_parse"] == settings.weights_dir / FACE_PARSE
    assert _presence(settings).ready and "musetalk" in server_files(settings)  # the tab's folder picker lists it
    # a second run fetches nothing: one listing per repository
    requests = len(hub.requests)
    again = get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url)
    assert not again.placed and len(again.kept) == len(EXPECTED) and not again.notes
    assert [r.path.split("?")[0] for r in hub.requests[requests:]] == [f"/api/models/{repo}" for repo in REPOS]


def test_a_stopped_share_resumes_and_nothing_moves_until_every_share_is_complete(
    hub: StandInHub, settings: Settings
) -> None:
    hub.cut_after["model.safetensors"] = 20_000  # whisper's weights, the last share fetched
    with pytest.raises(WeightsError, match="run it again to continue") as stopped:
        get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url)
    assert "\n" not in str(stopped.value)
    assert _gets(hub, MUSETALK.repo, "musetalkV15/unet.pth")  # the other shares were fetched...
    assert not (settings.weights_dir / "musetalk").exists() and server_files(settings) == {}  # ...and not placed
    assert not locate(settings).paths  # the finder sees nothing of the set
    plan = list_files(MUSETALK, settings, endpoint=hub.url)
    whisper = next(f for f in plan.files if f.repo == WHISPER and f.path == "model.safetensors")
    assert partial_path(settings, plan, whisper).stat().st_size == 20_000
    unet_requests = len(_gets(hub, MUSETALK.repo, "musetalkV15/unet.pth"))
    download(plan, settings, accept_licence=True)
    assert _gets(hub, WHISPER, "model.safetensors")[-1].range == "bytes=20000-"
    assert len(_gets(hub, MUSETALK.repo, "musetalkV15/unet.pth")) == unet_requests  # finished files not fetched again
    assert _placed(settings) == {place: REPOS[repo][path] for (repo, path), place in EXPECTED.items()}


def test_one_failing_share_places_nothing(hub: StandInHub, settings: Settings) -> None:
    # a share's repository is gone: stopped at the listing, before any file is fetched
    del hub.repos[VAE]
    with pytest.raises(WeightsError, match=f"has no public model repository {VAE}") as gone:
        get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url)
    assert "sd-vae-ft-mse VAE" in str(gone.value) and "\n" not in str(gone.value)
    assert (
        not [r for r in hub.requests if "/resolve/" in r.path]
        and not settings.weights_dir.joinpath("musetalk").exists()
    )
    # a share's file is missing: the same
    hub.add(VAE, dict(VAE_FILES))
    del hub.repos[WHISPER]["model.safetensors"], hub.repos[WHISPER]["pytorch_model.bin"]
    with pytest.raises(WeightsError, match=f"{WHISPER} has no model.safetensors or pytorch_model.bin"):
        get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url)
    assert not [r for r in hub.requests if "/resolve/" in r.path]
    # a file that fails its check: the rest of the set was fetched but nothing is placed
    hub.add(WHISPER, dict(WHISPER_FILES))
    plan = list_files(MUSETALK, settings, endpoint=hub.url)
    vae = next(f for f in plan.files if f.repo == VAE and f.path.endswith(".safetensors"))
    part = partial_path(settings, plan, vae)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1_000)
    with pytest.raises(WeightsError, match="does not match the Hub's hash"):
        download(plan, settings, accept_licence=True)
    assert _gets(hub, MUSETALK.repo, "musetalkV15/unet.pth") and not (settings.weights_dir / "musetalk").exists()
    download(plan, settings, accept_licence=True)  # that file starts over; the others are kept
    assert len(_gets(hub, MUSETALK.repo, "musetalkV15/unet.pth")) == 1
    assert _placed(settings) == {place: REPOS[repo][path] for (repo, path), place in EXPECTED.items()}


def test_offline_or_unreachable_names_every_share(
    hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = settings.weights_dir
    wanted = [
        f"from huggingface.co/{MUSETALK.repo} into {root / 'musetalk'}",
        f"musetalkV15/unet.pth and musetalkV15/musetalk.json from huggingface.co/{MUSETALK.repo}",
        f"config.json and diffusion_pytorch_model.safetensors or diffusion_pytorch_model.bin from huggingface.co/{VAE} "
        f"into {root / 'musetalk/sd-vae'}",
        f"config.json, preprocessor_config.json and model.safetensors or pytorch_model.bin from "
        f"huggingface.co/{WHISPER} into {root / 'musetalk/whisper'}",
        "79999_iter.pth (the BiSeNet face-parsing weights of zllrunning/face-parsing.PyTorch; not on the Hub)",
        f"from {FACE_PARSE_URL} into {root / 'musetalk/face-parse-bisent'}",
        "or set AVATARBENCH_MUSETALK_DIR to a folder laid out that way",
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set") as offline:
        get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url)
    assert "\n" not in str(offline.value) and all(w in str(offline.value) for w in wanted), str(offline.value)
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsError, match="the Hub is unreachable") as unreachable:
        get_weights("musetalk", settings, accept_licence=True, endpoint=f"http://127.0.0.1:{free_port()}")
    assert "\n" not in str(unreachable.value) and all(w in str(unreachable.value) for w in wanted)


def test_a_copy_replaces_only_musetalks_own_share(hub: StandInHub, settings: Settings) -> None:
    mirror = {p: random_bytes(len(d), 40 + i) for i, (p, d) in enumerate(MUSETALK_FILES.items()) if "V15" in p}
    hub.add("mirror/MuseTalk", mirror)
    fetched = get_weights("musetalk", settings, repo="mirror/MuseTalk", accept_licence=True, endpoint=hub.url)
    assert fetched.plan.repos == (("mirror/MuseTalk", COMMIT), (VAE, COMMIT), (WHISPER, COMMIT))
    unet = settings.weights_dir / "musetalk/musetalkV15/unet.pth"
    assert unet.read_bytes() == mirror["musetalkV15/unet.pth"] and not _gets(hub, MUSETALK.repo, "musetalkV15/unet.pth")
    assert (settings.weights_dir / "musetalk/sd-vae/config.json").read_bytes() == VAE_FILES["config.json"]


def test_the_other_format_already_here_counts_and_v1_adds_only_its_unet(hub: StandInHub, settings: Settings) -> None:
    vae_bin = settings.weights_dir / "musetalk/sd-vae/diffusion_pytorch_model.bin"  # upstream's script fetched the .bin
    vae_bin.parent.mkdir(parents=True)
    vae_bin.write_bytes(VAE_FILES["diffusion_pytorch_model.bin"])
    plan = list_files(MUSETALK, settings, endpoint=hub.url)
    assert vae_bin in [f.target for f in plan.files] and vae_bin not in [f.target for f in plan.missing()]
    download(plan, settings, accept_licence=True)
    assert not _gets(hub, VAE, "diffusion_pytorch_model.safetensors") and not _gets(hub, VAE, vae_bin.name)
    assert locate(settings)["vae_weights"] == vae_bin
    v1 = get_weights("musetalk-v1", settings, accept_licence=True, endpoint=hub.url)
    placed = sorted(p.relative_to(settings.weights_dir).as_posix() for p in v1.placed)
    assert placed == ["musetalk/musetalk/musetalk.json", "musetalk/musetalk/pytorch_model.bin"]
    assert len(v1.kept) == len(EXPECTED) - 2 and v1.plan.source is MUSETALK_V1  # the shared VAE and whisper kept
    assert [p.name for p in locate(settings, version=V1).missing] == ["face_parse"]


def test_the_inventory_agrees_with_musetalks_finder(tmp_path: Path, hub: StandInHub, settings: Settings) -> None:
    assert _presence(settings).found is None and not locate(settings).paths
    get_weights("musetalk", settings, accept_licence=True, endpoint=hub.url)
    assert _presence(settings).found == settings.weights_dir / "musetalk" and not locate(settings).complete
    checkout = tmp_path / "MuseTalk"  # an upstream checkout: models/ inside, named by the setting
    (checkout / "models").parent.mkdir()
    (settings.weights_dir / "musetalk").rename(checkout / "models")
    elsewhere = dataclasses.replace(settings, musetalk_dir=str(checkout))
    (checkout / "models/face-parse-bisent/79999_iter.pth").write_bytes(b"x")
    presence, files = _presence(elsewhere), locate(elsewhere)
    assert presence.ready and presence.found == files.folder == checkout / "models" and files.complete
    fetched = get_weights("musetalk", elsewhere, accept_licence=True, endpoint=hub.url)  # lands in the weights folder
    assert any("AVATARBENCH_MUSETALK_DIR is set" in note for note in fetched.notes)
    from_hub = _presence(dataclasses.replace(settings, musetalk_dir="hf:"))
    assert from_hub.missing == ("hf: (fetched when first used)", "face-parse-bisent/79999_iter.pth")
    (settings.weights_dir / FACE_PARSE).write_bytes(b"x")  # the file placed by hand is looked for in the weights folder
    assert _presence(dataclasses.replace(settings, musetalk_dir="hf:")).missing == ("hf: (fetched when first used)",)


def test_the_panel_lists_every_share_and_the_file_to_place_by_hand(hub: StandInHub, settings: Settings) -> None:
    gr = pytest.importorskip("gradio")  # the panel is the web app's (a GPU image may lack gradio)
    from ui.jobs import Access
    from ui.weights import WeightsActions, contents, weights_panel

    listing = contents(MUSETALK)
    for repo, folder in [(MUSETALK.repo, "musetalk"), (VAE, "musetalk/sd-vae"), (WHISPER, "musetalk/whisper")]:
        assert f"- `{repo}`: " in listing and f"→ `{folder}/`" in listing
    assert f"`{FACE_PARSE}`" in listing and FACE_PARSE_URL in listing and str(settings.weights_dir) not in listing
    assert contents(test_downloads.LIVEPORTRAIT) == ""  # one repository: the panel reads as before
    actions = WeightsActions(settings, Access(OPERATORS), MUSETALK, pickers=1, endpoint=hub.url)
    assert "❌ MuseTalk v1.5: missing" in actions.status() and f"✋ by hand: `{FACE_PARSE}`" in actions.status()
    with pytest.raises(gr.Error, match="CreativeML OpenRAIL-M"):
        actions.get("", False, VISITOR)
    status, update = actions.get("", True, VISITOR)
    assert f"from `{MUSETALK.repo}`, `{VAE}`, `{WHISPER}`" in status and "7 file(s) downloaded" in status
    assert f"✋ by hand: `{FACE_PARSE}`" in status and FACE_PARSE_URL in status
    assert str(settings.weights_dir) not in status  # names under the weights folder, not server paths
    assert "musetalk" in update["choices"]
    with gr.Blocks() as demo:
        picker = gr.Dropdown([""], allow_custom_value=True)
        weights_panel(settings, Access(OPERATORS), "musetalk", [picker])
    texts = [c["props"].get("value") or "" for c in demo.config["components"] if c["type"] == "markdown"]
    assert any(FACE_PARSE_URL in t and f"`{VAE}`" in t for t in texts)
    assert [c["props"]["visible"] for c in demo.config["components"] if c["type"] == "checkbox"] == [True]


def test_the_command_line(hub: StandInHub, tmp_path: Path) -> None:
    refused = test_downloads._cli("get", "musetalk", "--quiet", hub=hub, data=tmp_path)
    assert refused.returncode == 2 and "CreativeML OpenRAIL-M" in refused.stderr and hub.requests == []
    got = test_downloads._cli("get", "musetalk", "--accept-licence", "--quiet", hub=hub, data=tmp_path)
    assert got.returncode == 0, got.stderr
    listing = got.stdout.splitlines()
    assert f"from {MUSETALK.repo} at {COMMIT[:7]}, {VAE} at {COMMIT[:7]}, {WHISPER} at" in listing[0]
    assert any("model.safetensors" in line and "as musetalk/whisper/model.safetensors" in line for line in listing)
    assert "7 file(s) placed" in got.stdout and FACE_PARSE_URL in got.stdout
    status = test_downloads._cli("list", hub=hub, data=tmp_path)
    row = next(line for line in status.stdout.splitlines() if line.startswith("musetalk"))
    assert row.split()[:2] == ["musetalk", "partial"] and "79999_iter.pth" in status.stdout


def test_two_files_of_one_content_are_fetched_once_and_both_placed(hub: StandInHub, settings: Settings) -> None:
    both = Source("both", "Both UNet configs", MUSETALK.repo, "", into="musetalk",
                  patterns=("musetalkV15/musetalk.json", "musetalk/musetalk.json"))  # fmt: skip
    assert MUSETALK_FILES["musetalkV15/musetalk.json"] == MUSETALK_FILES["musetalk/musetalk.json"]
    fetched = download(list_files(both, settings, endpoint=hub.url), settings)
    assert len(fetched.placed) == 2 and len([r for r in hub.requests if "/resolve/" in r.path]) == 1
    for path in ("musetalkV15/musetalk.json", "musetalk/musetalk.json"):
        assert (settings.weights_dir / "musetalk" / path).read_bytes() == MUSETALK_FILES[path]
