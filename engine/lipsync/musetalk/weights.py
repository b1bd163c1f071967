"""MuseTalk's official files: where they are, and loading them unchanged into diffusers' and transformers' classes.

The files keep upstream's `models/` layout (TMElyralab/MuseTalk's download_weights.sh and README):

    musetalkV15/unet.pth, musetalkV15/musetalk.json      the v1.5 UNet: a raw state dict (686 tensors) and its config
    musetalk/pytorch_model.bin, musetalk/musetalk.json   the v1.0 UNet, same format
    sd-vae/config.json, sd-vae/diffusion_pytorch_model.bin (or .safetensors)   stabilityai/sd-vae-ft-mse
    whisper/config.json, whisper/pytorch_model.bin (or model.safetensors), whisper/preprocessor_config.json
                                                          openai/whisper-tiny (only its encoder is used)
    face-parse-bisent/79999_iter.pth                      BiSeNet face parsing (Google Drive; no official Hub copy)

(upstream's face-parse-bisent/resnet18-5c106cde.pth is not needed: our BiSeNet builds without it.)

Optional, beside them (never in `missing`; without them the face box comes from a face detector):

    dwpose/dw-ll_ucoco_384.onnx      DWPose's ONNX release (huggingface.co/yzd-v/DWPose): the 68 face landmarks
                                      upstream takes from its mmpose copy, models/dwpose/dw-ll_ucoco_384.pth
    dwpose/yolox_l.onnx               the same release's YOLOX-L person detector (used only when asked for)

They are looked for in the layout's dwpose/ folder and, unless the folder was named (an argument or the setting),
in the Hub's local cache of yzd-v/DWPose; never downloaded (see dwpose.py for how they are run).

Where they are found: the folder given (an argument, else the AVATARBENCH_MUSETALK_DIR setting), which must hold
them all; else `musetalk/` in the weights folder, each file missing there looked up in the Hugging Face Hub's local
cache of its official repository. `hf:` (or `hf:OWNER/REPO` for a copy of TMElyralab/MuseTalk's files) downloads the
Hub's files when the machine is online; the face-parsing file has no official Hub repository and is placed by hand.

Loading never holds an fp32 copy of a network on the device: each network is built on the meta device, its file is
memory-mapped (zip-format checkpoints) and every tensor is converted to the chosen dtype and device on its own before
it is assigned. A wrong file (a web page, a Git LFS pointer, another network's weights, a config of another model)
is a CheckpointError naming the file; a missing one is a WeightsError saying where it goes and where it comes from.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from engine.core.errors import InputError, one_line
from engine.core.hub import MUSETALK, MUSETALK_LICENCE, MUSETALK_V1, checked_repo
from engine.core.settings import PREFIX, Settings
from engine.core.weights import WeightsError
from engine.models.bisenet import BISENET_EXPECTED, BiSeNet, load_bisenet
from engine.models.checkpoints import CheckpointError, load_strict, read_checkpoint, sniff

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

T = TypeVar("T")
V15, V1 = "v15", "v1"  # upstream's --version values
VERSIONS = (V15, V1)
HUB_REPO = "TMElyralab/MuseTalk"  # the UNets and their configs
VAE_REPO = "stabilityai/sd-vae-ft-mse"
WHISPER_REPO = "openai/whisper-tiny"
FACE_PARSE_URL = "https://drive.google.com/file/d/154JgKpzCPW82qINcVieuPH3fZ2e0P812"  # download_weights.sh's source
DWPOSE_REPO = "yzd-v/DWPose"  # DWPose's ONNX release: dw-ll_ucoco_384.onnx and yolox_l.onnx at its top level
FOLDER = "musetalk"  # under the weights folder
SETTING = "MUSETALK_DIR"  # AVATARBENCH_MUSETALK_DIR
LICENCE = MUSETALK_LICENCE  # one wording, beside the Get weights set (engine/core/hub.py)

# musetalkV15/musetalk.json as published (the v1.0 musetalk/musetalk.json describes the same network): for
# benchmarks and checks that need the real network without its file. `attention_head_dim: 8` is SD-1.x's misnomer
# for 8 heads per attention layer. 849,947,844 parameters in 686 tensors.
UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
UNET_PARAMETERS = 849_947_844
UNET_TENSORS = 686
# stabilityai/sd-vae-ft-mse's config.json (it has no scaling_factor: diffusers' default 0.18215 is MuseTalk's).
VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
VAE_PARAMETERS = 83_653_863
VAE_TENSORS = 248
# The encoder's part of openai/whisper-tiny's config.json (the rest describes the decoder, which is not used).
WHISPER_ENCODER_CONFIG: dict[str, Any] = {
    "model_type": "whisper",
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "activation_function": "gelu",
    "scale_embedding": False,
}
WHISPER_ENCODER_PARAMETERS = 8_208_384
WHISPER_ENCODER_TENSORS = 67

_LEGACY_VAE_ATTENTION = re.compile(r"^((?:en|de)coder\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.")
_VAE_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # saved from WhisperForConditionalGeneration / WhisperModel


# ---------------------------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class Part:
    """One file of the layout: the names it may have under models/ (preferred first), the Hub repository it comes
    from and its path there (None: not on the Hub), and what it is, for messages."""

    name: str
    places: tuple[str, ...]
    repo: str | None
    repo_path: str
    what: str

    def source(self, hub_repo: str = HUB_REPO) -> str:
        if self.repo is None:
            return f"by hand from {FACE_PARSE_URL}: not on the Hub"
        return f"from huggingface.co/{hub_repo if self.repo == HUB_REPO else self.repo}"


def parts(version: str = V15) -> tuple[Part, ...]:
    """The files MuseTalk `version` needs (v15 or v1)."""
    if version not in VERSIONS:
        raise InputError(f"MuseTalk version {version!r} is not one of {', '.join(VERSIONS)}")
    unet, config = (
        ("musetalkV15/unet.pth", "musetalkV15/musetalk.json") if version == V15 else
        ("musetalk/pytorch_model.bin", "musetalk/musetalk.json")
    )  # fmt: skip
    label = "v1.5" if version == V15 else "v1.0"
    return (
        Part("unet", (unet,), HUB_REPO, unet, f"the MuseTalk {label} UNet weights"),
        Part("unet_config", (config,), HUB_REPO, config, f"the MuseTalk {label} UNet config"),
        Part("vae_config", ("sd-vae/config.json",), VAE_REPO, "config.json", "the sd-vae-ft-mse config"),
        Part(
            "vae_weights",
            ("sd-vae/diffusion_pytorch_model.safetensors", "sd-vae/diffusion_pytorch_model.bin"),
            VAE_REPO,
            "diffusion_pytorch_model.bin",
            "the sd-vae-ft-mse weights",
        ),
        Part("whisper_config", ("whisper/config.json",), WHISPER_REPO, "config.json", "the whisper-tiny config"),
        Part(
            "whisper_weights",
            ("whisper/model.safetensors", "whisper/pytorch_model.bin"),
            WHISPER_REPO,
            "pytorch_model.bin",
            "the whisper-tiny weights",
        ),
        Part(
            "whisper_preprocessor",
            ("whisper/preprocessor_config.json",),
            WHISPER_REPO,
            "preprocessor_config.json",
            "the whisper-tiny feature extractor config",
        ),
        Part("face_parse", ("face-parse-bisent/79999_iter.pth",), None, "", "the BiSeNet face-parsing weights"),
    )


def optional_parts() -> tuple[Part, ...]:
    """Files MuseTalk runs without: DWPose's ONNX release, for the face box from 68 landmarks as upstream makes it."""
    return (
        Part(
            "dwpose",
            ("dwpose/dw-ll_ucoco_384.onnx",),
            DWPOSE_REPO,
            "dw-ll_ucoco_384.onnx",
            "DWPose's whole-body landmark model (ONNX)",
        ),
        Part(
            "dwpose_detector", ("dwpose/yolox_l.onnx",), DWPOSE_REPO, "yolox_l.onnx", "DWPose's YOLOX person detector"
        ),
    )


@dataclass(frozen=True)
class MuseTalkFiles:
    """Where each file of one MuseTalk version is (by Part.name), which are missing, and where those should go;
    `optional` holds the optional_parts() found (by Part.name)."""

    version: str
    paths: Mapping[str, Path]
    missing: tuple[Part, ...]
    folder: Path  # where the layout is (or should be)
    hub_repo: str = HUB_REPO
    optional: Mapping[str, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]

    def describe_missing(self) -> str:
        """One line: the missing files by where they come from, the command that fetches the Hub's, and the other
        ways to point at them (each file's every accepted name: the Hub's sd-vae weights are the .bin)."""
        origins: dict[str, list[str]] = {}
        for part in self.missing:
            origins.setdefault(part.source(self.hub_repo), []).append(" or ".join(part.places))
        items = "; ".join(f"{', '.join(names)} ({origin})" for origin, names in origins.items())
        a_file = (
            f"{self.folder} is a file, not a folder. "
            if self.folder.is_file()
            else ("" if self.folder.exists() else f"{self.folder}: there is no such folder. ")
        )  # a typo: not a file in it
        command = (MUSETALK if self.version == V15 else MUSETALK_V1).command
        return (
            f"{a_file}MuseTalk {self.version}: missing {items}. `{command}` (or the app's Get the official weights "
            f"panel) fetches the Hub's files; or put them under {self.folder} in upstream's models/ layout, set "
            f"{PREFIX}{SETTING} (or --musetalk-weights) to a folder laid out that way, or give --musetalk-weights "
            f"hf:{HUB_REPO}. {LICENCE}"
        )


def _layout_root(folder: Path, version: str) -> Path:
    """The folder itself or its models/ subfolder (an upstream checkout), whichever holds any of the files."""
    for candidate in (folder, folder / "models"):
        if any((candidate / place).is_file() for part in parts(version) for place in part.places):
            return candidate
    return folder


def _in_folder(folder: Path, part: Part) -> Path | None:
    return next((folder / p for p in part.places if (folder / p).is_file()), None)


def _repo_names(part: Part) -> list[str]:
    """The part's names in its Hub repository: the download script's first, then the other accepted ones."""
    names = [place if part.repo == HUB_REPO else place.split("/", 1)[1] for place in part.places]
    return list(dict.fromkeys([part.repo_path, *names]))


def _from_hub(part: Part, hub_repo: str, download: bool) -> Path | None:
    """The part's file from the Hub's local cache, or (download=True) fetched into it; None when not there."""
    if part.repo is None:
        return None
    repo = hub_repo if part.repo == HUB_REPO else part.repo
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    if download:
        from engine.core.hub import fetch_file

        return fetch_file(repo, part.repo_path)
    for name in _repo_names(part):
        try:
            return Path(hf_hub_download(repo, name, local_files_only=True))
        except Exception:  # not in the cache (LocalEntryNotFoundError), or no usable cache at all
            continue
    return None


def locate(
    settings: Settings, weights: str | os.PathLike[str] | None = None, version: str = V15, download: bool = False
) -> MuseTalkFiles:
    """Find MuseTalk's files; nothing here raises for a missing file (see `require`).

    `weights` (else AVATARBENCH_MUSETALK_DIR) names a folder, which must hold every file, or `hf:[OWNER/REPO]`, which
    takes the Hub's files (downloaded when `download` and online, else from the local cache) and the face-parsing
    file from the weights folder. With neither, each file comes from the weights folder's musetalk/, else from the
    Hub's local cache; the network is never reached then.
    """
    configured = str(weights) if weights not in (None, "") else settings.musetalk_dir
    default = _layout_root(settings.weights_dir / FOLDER, version)
    hub_repo = HUB_REPO
    if configured and configured.startswith("hf:"):
        hub_repo = checked_repo(configured.removeprefix("hf:").strip("/"), MUSETALK)  # hf:a/b/c: exit 2, not 3
        folder = default
        paths = {
            p.name: _in_folder(folder, p) if p.repo is None else _from_hub(p, hub_repo, download)
            for p in parts(version)
        }
    elif configured:
        folder = _layout_root(Path(configured).expanduser(), version)
        paths = {part.name: _in_folder(folder, part) for part in parts(version)}
    else:
        folder = default
        paths = {p.name: _in_folder(folder, p) or _from_hub(p, HUB_REPO, download=False) for p in parts(version)}
    missing = [part for part in parts(version) if paths[part.name] is None]
    found = {name: path for name, path in paths.items() if path is not None}
    hub_cache = not configured or configured.startswith("hf:")
    return MuseTalkFiles(version, found, tuple(missing), folder, hub_repo, _optional(folder, hub_cache))


def _optional(folder: Path, hub_cache: bool) -> dict[str, Path]:
    """The optional files in `folder`, else (`hub_cache`: the default folder or `hf:`) in the Hub's local cache of
    their repository. Never downloaded: they are optional, and a folder the user names holds what it holds."""
    found = {}
    for part in optional_parts():
        path = _in_folder(folder, part)
        if path is None and hub_cache:
            path = _from_hub(part, HUB_REPO, download=False)
        if path is not None:
            found[part.name] = path
    return found


def require(
    settings: Settings, weights: str | os.PathLike[str] | None = None, version: str = V15, download: bool = False
) -> MuseTalkFiles:
    """`locate`, then a WeightsError (a SetupError) naming every missing file, where it goes and where to get it."""
    files = locate(settings, weights, version, download)
    if not files.complete:
        raise WeightsError(files.describe_missing())
    return files


# ---------------------------------------------------------------------------------------------- reading files


def read_config(path: str | os.PathLike[str], expected: str) -> dict[str, Any]:
    """A JSON config file as a dict; a web page, an LFS pointer or anything but a JSON object is a CheckpointError."""
    path = Path(path)
    sniff(path, expected)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not a JSON config ({one_line(exc)})", path=path, expected=expected) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"holds a JSON {type(data).__name__}, not an object", path=path, expected=expected)
    return data


def read_state(path: str | os.PathLike[str], expected: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, on the CPU (torch files through read_checkpoint: memory-
    mapped, so their tensors are read from the page cache as they are converted instead of copied in first)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_checkpoint(path, expected)
    sniff(path, expected)
    from safetensors.torch import load_file

    try:
        return dict(load_file(path, device="cpu"))
    except Exception as exc:  # SafetensorError, OSError: truncated, corrupt, not safetensors at all
        problem = "safetensors could not read it: the file is truncated or corrupt"
        raise CheckpointError(
            f"{problem} ({type(exc).__name__}: {one_line(exc)})", path=path, expected=expected
        ) from None


def _checked_class(config: Mapping[str, Any], key: str, wanted: str, path: Path, expected: str) -> None:
    found = config.get(key)
    if found is not None and found != wanted:
        raise CheckpointError(f"its {key} is {found!r}, not {wanted!r}", path=path, expected=expected)


def _materialise(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    device: torch.device | str,
    dtype: torch.dtype,
    expected: str,
    path: Path,
) -> None:
    """Check `state` against `model` (built on the meta device) key by key and shape by shape, then assign its
    tensors, each converted to `dtype` on `device` on its own: the device never holds a second copy."""
    load_strict(model, {k: v.to("meta") for k, v in state.items()}, expected, path=path)  # the check, data-free
    device = torch.device(device)
    converted = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer the file does not hold (none in these networks): a bug here, not a wrong file
        raise RuntimeError(f"{type(model).__name__} has tensors not set from its file: {', '.join(left[:5])}")
    model.eval().requires_grad_(False)


def convert_legacy_vae_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sd-vae-ft-mse's file predates diffusers' Attention class: its mid-block attention is named query/key/value/
    proj_attn (diffusers 0.4). Those become to_q/to_k/to_v/to_out.0, the names AutoencoderKL has now; others stay."""
    out = {}
    for key, value in state.items():
        match = _LEGACY_VAE_ATTENTION.match(key)
        new = key
        if match:
            new = f"{match[1]}{_VAE_ATTENTION_NAMES[match[2]]}.{key[match.end() :]}"
        if new in out:
            raise CheckpointError(f"the key {new!r} appears under both its old and its new name")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------- the networks


def meta_unet(config: Mapping[str, Any] = UNET_CONFIG) -> UNet2DConditionModel:
    """The UNet of `config` without weights (on the meta device): for loading, shapes, parameter counts, FLOPs."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(dict(config))


def meta_vae(config: Mapping[str, Any] = VAE_CONFIG) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL.from_config(dict(config))


def meta_whisper_encoder(config: Mapping[str, Any] = WHISPER_ENCODER_CONFIG) -> WhisperEncoder:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        return WhisperEncoder(WhisperConfig.from_dict(dict(config)))


def _built(make: Callable[[Mapping[str, Any]], T], settings: Mapping[str, Any], config: Path, expected: str) -> T:
    """The network of a config file: one the library cannot build from (a size of the wrong type, negative or
    inconsistent) is that file's error, said in one line, not the library's traceback."""
    try:
        return make(settings)
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"no network can be built from it ({type(exc).__name__}: {str(exc)[:300]})", path=config, expected=expected
        ) from None


def load_unet(
    weights: str | os.PathLike[str],
    config: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
) -> UNet2DConditionModel:
    """MuseTalk's UNet (diffusers' UNet2DConditionModel) from its raw state dict and musetalk.json, straight into
    `dtype` on `device` (upstream builds it in fp32, loads the fp32 file, then halves it: twice the memory)."""
    weights, config = Path(weights), Path(config)
    expected = f"MuseTalk's UNet ({weights.parent.name}/{weights.name} from huggingface.co/{HUB_REPO})"
    settings = read_config(config, f"MuseTalk's UNet config ({config.parent.name}/musetalk.json)")
    _checked_class(settings, "_class_name", "UNet2DConditionModel", config, "MuseTalk's musetalk.json")
    model = _built(meta_unet, settings, config, "MuseTalk's musetalk.json")
    _materialise(model, read_state(weights, expected), device, dtype, expected, weights)
    return model


def load_vae(
    config: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
) -> AutoencoderKL:
    """sd-vae-ft-mse as diffusers' AutoencoderKL from its folder's config.json and weights (old or new attention
    names). Its config has no scaling_factor, so the model's is diffusers' default, 0.18215, as upstream uses."""
    config, weights = Path(config), Path(weights)
    expected = f"the sd-vae-ft-mse VAE (sd-vae/{weights.name} from huggingface.co/{VAE_REPO})"
    settings = read_config(config, f"the sd-vae-ft-mse config (sd-vae/config.json from huggingface.co/{VAE_REPO})")
    _checked_class(settings, "_class_name", "AutoencoderKL", config, "sd-vae-ft-mse's config.json")
    model = _built(meta_vae, settings, config, "sd-vae-ft-mse's config.json")
    _materialise(model, convert_legacy_vae_names(read_state(weights, expected)), device, dtype, expected, weights)
    return model


def load_whisper_encoder(
    config: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
) -> WhisperEncoder:
    """whisper-tiny's encoder (transformers' WhisperEncoder, the `encoder` of WhisperModel) from its folder's
    config.json and weights; the decoder's tensors in the file are skipped, never loaded."""
    config, weights = Path(config), Path(weights)
    expected = f"whisper-tiny (whisper/{weights.name} from huggingface.co/{WHISPER_REPO})"
    settings = read_config(config, f"whisper-tiny's config (whisper/config.json from huggingface.co/{WHISPER_REPO})")
    _checked_class(settings, "model_type", "whisper", config, "whisper-tiny's config.json")
    state = read_state(weights, expected)
    # The encoder's own first keys, not just the prefix: sd-vae's keys start with "encoder." too.
    prefix = next(
        (p for p in _WHISPER_ENCODER_PREFIXES if any(k.startswith((f"{p}conv1.", f"{p}layers.")) for k in state)), None
    )
    if prefix is None:
        raise CheckpointError(
            f"it holds no Whisper encoder weights (no key starts with {' or '.join(_WHISPER_ENCODER_PREFIXES)} "
            "followed by conv1. or layers.)",
            path=weights,
            expected=expected,
        )
    encoder = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    model = _built(meta_whisper_encoder, settings, config, "whisper-tiny's config.json")
    _materialise(model, encoder, device, dtype, expected, weights)
    return model


@dataclass
class MuseTalkNetworks:
    """The four networks of one MuseTalk version, on one device."""

    version: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    whisper: WhisperEncoder
    face_parser: BiSeNet
    device: torch.device
    dtype: torch.dtype


def load_networks(
    files: MuseTalkFiles,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float16,
    parser_dtype: torch.dtype = torch.float32,
) -> MuseTalkNetworks:
    """Every network of `files` (which must be complete) in `dtype` on `device`; the face parser in `parser_dtype`
    (default fp32, as upstream parses faces whatever the other networks' precision)."""
    if not files.complete:
        raise WeightsError(files.describe_missing())
    device = torch.device(device)
    return MuseTalkNetworks(
        version=files.version,
        unet=load_unet(files["unet"], files["unet_config"], device, dtype),
        vae=load_vae(files["vae_config"], files["vae_weights"], device, dtype),
        whisper=load_whisper_encoder(files["whisper_config"], files["whisper_weights"], device, dtype),
        face_parser=load_bisenet(files["face_parse"], device, parser_dtype),
        device=device,
        dtype=dtype,
    )


__all__ = [
    "BISENET_EXPECTED",
    "DWPOSE_REPO",
    "FACE_PARSE_URL",
    "HUB_REPO",
    "LICENCE",
    "UNET_CONFIG",
    "V1",
    "V15",
    "VAE_CONFIG",
    "VAE_REPO",
    "VERSIONS",
    "WHISPER_ENCODER_CONFIG",
    "WHISPER_REPO",
    "MuseTalkFiles",
    "MuseTalkNetworks",
    "Part",
    "convert_legacy_vae_names",
    "load_networks",
    "load_unet",
    "load_vae",
    "load_whisper_encoder",
    "locate",
    "meta_unet",
    "meta_vae",
    "meta_whisper_encoder",
    "optional_parts",
    "parts",
    "read_config",
    "read_state",
    "require",
]
