"""LivePortrait's weights for a portrait run, and so its engine: the folder is an explicit path or `hf:` reference >
AVATARBENCH_LIVEPORTRAIT_DIR > the weights dir > the Hugging Face Hub's cache (downloaded only when asked), and all
five files are checked before any loads; LivePortrait runs where they are found, the weight-free baseline where none
were asked for and none are there. Motion templates hold LivePortrait keypoints, so one that would meet the baseline
is refused, at submit where that can be known. Apart from the run because the CLI's export and the job's submit
check look the weights up too, without loading anything."""

from __future__ import annotations

from pathlib import Path

from engine.core.errors import one_line
from engine.core.hub import LIVEPORTRAIT, checked_repo
from engine.core.settings import Settings
from engine.core.weights import WeightsError
from engine.portrait.config import PortraitConfig, PortraitError, is_template

HUB_REPO = LIVEPORTRAIT.repo


def hub_weights(reference: str, download: bool) -> Path | None:
    """The `liveportrait/` folder of a Hub snapshot (`hf:OWNER/REPO`): downloaded when asked for and online,
    otherwise only looked up in the Hub's local cache (None when it is not there)."""
    repo = checked_repo(reference.removeprefix("hf:").strip("/"), LIVEPORTRAIT)
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(repo, allow_patterns=list(LIVEPORTRAIT.patterns), local_files_only=not download)
    except Exception as exc:  # offline, not cached, no such repo, huggingface_hub missing
        if download:
            raise WeightsError(f"could not fetch the LivePortrait weights from {reference}: {one_line(exc)}") from None
        return None
    folder = Path(snapshot) / "liveportrait"
    return folder if (folder / "base_models").is_dir() else None


def _weights_in(folder: Path) -> Path | None:
    """The folder holding base_models/: the one given, or its liveportrait/ subfolder (the official
    pretrained_weights folder as downloaded from the Hub)."""
    for candidate in (folder, folder / "liveportrait"):
        if (candidate / "base_models").is_dir():
            return candidate
    return None


def weights_folder(given: str | None, settings: Settings) -> Path:
    """Explicit path or `hf:` reference (`given`) > AVATARBENCH_LIVEPORTRAIT_DIR > weights dir > the Hub's cache."""
    configured = given or settings.liveportrait_dir
    if configured and str(configured).startswith("hf:"):
        found = hub_weights(str(configured), download=True)
        if found is None:
            raise WeightsError(f"{configured} has no liveportrait/base_models folder")
        return _complete(found)
    folder = Path(configured or settings.weights_dir / "liveportrait")
    found = _weights_in(folder) or (None if configured else hub_weights(f"hf:{HUB_REPO}", download=False))
    if found is not None:
        return _complete(found)
    if folder.is_file():
        raise WeightsError(f"{folder} is a file: the LivePortrait weights are a folder (pretrained_weights)")
    where = (
        "there is no such folder" if not folder.exists() else "no base_models/ there or in its liveportrait/ subfolder"
    )
    raise WeightsError(
        f"no LivePortrait weights in {folder} ({where}): put the "
        f"official pretrained_weights folder there (liveportrait/base_models/*.pth and liveportrait/"
        f"retargeting_models/stitching_retargeting_module.pth, from the Hugging Face repository {HUB_REPO}), "
        f"set AVATARBENCH_LIVEPORTRAIT_DIR / --weights, or give --weights hf:{HUB_REPO} to download it"
    )


def _complete(folder: Path) -> Path:
    """The weights folder, once it holds all five files: the ones missing are named together, before any loads."""
    from engine.models.liveportrait import WEIGHT_FILES

    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsError(
            f"{folder} lacks {len(missing)} of LivePortrait's {len(WEIGHT_FILES)} weight files: {', '.join(missing)} "
            f"(pretrained_weights/liveportrait/ of the Hugging Face repository {HUB_REPO}); download them, or give "
            f"--weights hf:{HUB_REPO}"
        )
    return folder


def pick_engine(config: PortraitConfig, settings: Settings) -> tuple[str, Path | None]:
    """The engine and, for LivePortrait, its weights folder (looked up once: it may search the Hub's cache). Weights
    asked for (the liveportrait engine, or a --weights folder) must be there: only a search falls back."""
    if config.engine == "baseline":
        return "baseline", None
    if config.engine == "liveportrait" or config.weights:
        return "liveportrait", weights_folder(config.weights, settings)
    try:
        return "liveportrait", weights_folder(config.weights, settings)
    except WeightsError:
        return "baseline", None


def refuse_template_without_weights(config: PortraitConfig, settings: Settings) -> None:
    """At submit: a motion template that would meet the baseline engine (chosen, or no LivePortrait weights to find)
    is refused now rather than as a failed job. A Hub reference is left to the run (looking it up may download)."""
    configured = config.weights or settings.liveportrait_dir
    if not is_template(config.driving) or str(configured or "").startswith("hf:"):
        return
    if pick_engine(config, settings)[0] == "baseline":
        raise template_refusal(config)


def template_refusal(config: PortraitConfig) -> PortraitError:
    why = "no LivePortrait weights were found" if config.engine == "auto" else "the baseline engine was chosen"
    return PortraitError(
        f"motion templates hold LivePortrait keypoints, which need LivePortrait's weights, and {why}: give the "
        "weights (AVATARBENCH_LIVEPORTRAIT_DIR or --weights), or a driving video or image"
    )
