"""The "Get weights" panel (ui/weights.py): its handler called as the page calls it, against a stand-in Hub the test
starts: visitors get the default repository's files (unless downloads are the operator's), only an operator names
another repository, Wav2Lip's licence box must be ticked, offline says what to place where, and the tab's weight
pickers list the new files afterwards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import test_downloads
from hub_standin import StandInHub, random_bytes

from engine.core.errors import InputError
from engine.core.hub import LIVEPORTRAIT, WAV2LIP_S3FD
from engine.core.settings import Settings

gr = pytest.importorskip("gradio")  # the web app's panel (a GPU image may lack gradio)
from ui.jobs import EVERYONE, Access  # noqa: E402
from ui.weights import WeightsActions, weights_panel  # noqa: E402

VISITOR = SimpleNamespace(username=None, session_hash="visitor")
OPERATOR = SimpleNamespace(username="op", session_hash="op-session")
ACCESS = Access(frozenset({"op"}))
hub, settings = test_downloads.hub, test_downloads.settings  # fixtures: the download tests' stand-in Hub and settings


def _actions(settings: Settings, hub: StandInHub, engine: str, **kwargs) -> WeightsActions:
    from engine.core.hub import source_named

    return WeightsActions(settings, kwargs.pop("access", ACCESS), source_named(engine), pickers=2, endpoint=hub.url,
                          **kwargs)  # fmt: skip


def test_a_visitor_gets_the_official_files_and_the_pickers_list_them(hub: StandInHub, settings: Settings) -> None:
    actions = _actions(settings, hub, "liveportrait")
    assert "❌ LivePortrait: missing" in actions.status()
    calls = []
    status, *updates = actions.get(LIVEPORTRAIT.repo, False, VISITOR, lambda f, label: calls.append((f, label)))
    assert "6 file(s) downloaded" in status and "✅ LivePortrait: `liveportrait`" in status
    assert str(settings.weights_dir) not in status  # names under the weights folder, not server paths
    assert len(updates) == 2
    for update in updates:
        assert {"liveportrait", "liveportrait/landmark.onnx"} <= set(update["choices"]) and "" in update["choices"]
    assert calls[-1][0] == 1.0 and any("of 636.3 kB" in label for _, label in calls)


def test_only_an_operator_changes_the_repository(hub: StandInHub, settings: Settings) -> None:
    actions = _actions(settings, hub, "wav2lip")
    with pytest.raises(gr.Error, match="only the operator may download from another repository"):
        actions.get("mirror/Wav2Lip", True, VISITOR)
    with pytest.raises(gr.Error, match="only the operator"):
        actions.get("mirror/Wav2Lip", True, None)  # no request at all is a visitor too
    assert hub.requests == []
    status, *_ = actions.get("mirror/Wav2Lip", True, OPERATOR)
    assert "`mirror/Wav2Lip`" in status and (settings.weights_dir / "s3fd.pth").read_bytes() == random_bytes(900, 21)
    everyone = _actions(settings, hub, "wav2lip", access=Access(frozenset({EVERYONE})))
    everyone.get("mirror/Wav2Lip", True, VISITOR)  # `--operator '*'`: a personal machine


def test_a_repository_name_past_any_real_one_is_not_echoed_whole(hub: StandInHub, settings: Settings) -> None:
    """5000 characters typed in the repository box came back whole in the toast (and the server log)."""
    actions = _actions(settings, hub, "wav2lip")
    for request in (VISITOR, OPERATOR):
        refusal = r"repository 'x{40}'\.\.\. \(5,000 characters\) is not OWNER/NAME .*e\.g\. camenduru/Wav2Lip"
        with pytest.raises(gr.Error, match=refusal) as no:
            actions.get("x" * 5000, True, request)
        assert len(str(no.value)) < 300
    assert hub.requests == []


def test_the_licence_box_must_be_ticked(hub: StandInHub, settings: Settings) -> None:
    actions = _actions(settings, hub, "wav2lip")
    with pytest.raises(gr.Error, match="non-commercial use only") as refused:
        actions.get(WAV2LIP_S3FD.repo, False, VISITOR)
    assert "\n" not in refused.value.message and hub.requests == []
    status, *updates = actions.get(WAV2LIP_S3FD.repo, True, VISITOR)
    assert "✅ Wav2Lip generator: `wav2lip_gan.pth`" in status and "✅ S3FD face detector" in status
    assert "wav2lip_gan.pth" in updates[0]["choices"]


def test_the_operator_may_turn_visitors_downloads_off(hub: StandInHub, settings: Settings) -> None:
    actions = _actions(settings, hub, "liveportrait", visitors_may_download=False)
    with pytest.raises(gr.Error, match="for the operator"):
        actions.get(LIVEPORTRAIT.repo, False, VISITOR)
    actions.get(f" {LIVEPORTRAIT.repo}\n", False, OPERATOR)  # a pasted name's spaces are no part of it
    assert (settings.weights_dir / "liveportrait" / "landmark.onnx").is_file()


def test_offline_the_panel_says_what_to_place_where(
    hub: StandInHub, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(gr.Error, match="HF_HUB_OFFLINE") as offline:
        _actions(settings, hub, "wav2lip").get("", True, VISITOR)  # empty box: the default repository
    assert "wav2lip_gan.pth" in offline.value.message and "camenduru/Wav2Lip" in offline.value.message
    assert hub.requests == []


def test_the_panel_renders_and_wires_its_pickers(settings: Settings) -> None:
    with gr.Blocks() as demo:
        pickers = [gr.Dropdown(["", "x.pth"], allow_custom_value=True), gr.Dropdown([""], allow_custom_value=True)]
        lipsync = weights_panel(settings, ACCESS, "wav2lip", pickers)
        portrait = weights_panel(settings, ACCESS, "liveportrait", pickers[:1])
    assert (lipsync.pickers, portrait.pickers) == (2, 1)
    clicks = [d for d in demo.config["dependencies"] if d["targets"] and d["targets"][0][1] == "click"]
    assert len(clicks) == 2
    picker_ids = {p._id for p in pickers}
    assert picker_ids <= set(clicks[0]["outputs"]) and {pickers[0]._id} <= set(clicks[1]["outputs"])
    boxes = [c for c in demo.config["components"] if c["type"] == "checkbox"]
    assert [b["props"]["visible"] for b in boxes] == [True, False]  # the licence box only where a licence restricts
    with pytest.raises(InputError, match="sadtalker"), gr.Blocks():
        weights_panel(settings, ACCESS, "sadtalker")


def test_a_second_fetch_counts_only_what_it_downloaded_and_the_panel_shows_the_licence(
    hub: StandInHub, settings: Settings
) -> None:
    """Files already here are counted as kept, not as downloaded, and add nothing to the size downloaded; the panel
    states the licence before the button."""
    actions = _actions(settings, hub, "liveportrait")
    actions.get(LIVEPORTRAIT.repo, False, VISITOR)
    again, *_ = actions.get(LIVEPORTRAIT.repo, False, VISITOR)
    assert "0 file(s) downloaded" in again and "6 already here" in again and "636.3 kB" not in again
    with gr.Blocks() as demo:
        weights_panel(settings, ACCESS, "wav2lip")
    texts = [c["props"].get("value") or "" for c in demo.config["components"] if c["type"] == "markdown"]
    assert any(WAV2LIP_S3FD.licence in text for text in texts)
