"""Get an engine's official weights from the Hugging Face Hub into the weights folder, when the machine is online and
someone asked for them.

A set of weights may come from several repositories (MuseTalk's UNet, VAE and audio encoder are three), each share
with its own revision and its own folder under the weights folder. Every share is listed from the Hub first (names,
sizes, hashes at one commit), so the total is known before a byte is fetched and a missing repository or file stops
the set before anything moves. Each file streams into a staging folder inside the weights folder (`.downloads/`),
continues where a stopped download left off (an HTTP Range request), is checked against the Hub's sha256 (git's blob
hash for small files), and every file of the set is moved into place only when all of them are complete: the engines
never see half a file or half a set. One download runs at a time per weights folder (a lock file), whichever process
asks. Files no Hub repository holds officially (MuseTalk's face-parsing weights) are named with where to put them and
where they come from. Offline (HF_HUB_OFFLINE) or with the Hub unreachable, one line says which files to put where.

huggingface_hub lists the files and makes the URLs; the transfer is ours because huggingface_hub 2.x no longer resumes
a stopped download (its partial files are unique to one attempt and deleted when it fails).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import importlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.errors import InputError, one_line
from engine.core.settings import PREFIX, Settings
from engine.core.weights import S3FD, WAV2LIP, ModelFile, WeightsError, resolve, unusable_here

Progress = Callable[[float, str], Any]

STAGING = ".downloads"  # inside the weights folder: same file system, so placing a file is a rename
LOCK = ".downloads.lock"
CHUNK = 1 << 20
LIST_TIMEOUT_S = 10.0  # listing is the first request: an unreachable Hub fails here, quickly
TRANSFER_TIMEOUT_S = 60.0
REPORTS_PER_RUN = 400  # progress reports over a whole download (plus one per file)
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")

LIVEPORTRAIT_NEEDS = (  # what our LivePortrait engine loads (engine/models/liveportrait/loading.py)
    "base_models/appearance_feature_extractor.pth",
    "base_models/motion_extractor.pth",
    "base_models/warping_module.pth",
    "base_models/spade_generator.pth",
    "retargeting_models/stitching_retargeting_module.pth",
)


@dataclass(frozen=True)
class Share:
    """One repository's part of a set. `patterns` pick repo paths that keep their place under `into` (a folder of the
    weights folder, "" for its top); each entry of `picks` is one file by name (preferred first, shallowest first in
    the repository), placed at `into`/name. `formats`: a pick's names are one file in several formats (safetensors
    or a torch pickle), so whichever is already in place counts and nothing is fetched twice. `revision`: a branch,
    tag or commit (None: the default branch), resolved to one commit when listed."""

    repo: str
    into: str = ""
    patterns: tuple[str, ...] = ()
    picks: tuple[tuple[str, ...], ...] = ()
    revision: str | None = None
    formats: bool = False
    what: str = ""  # what the share is, for messages

    def wanted(self) -> str:
        return ", ".join([*self.patterns, *(" or ".join(names) for names in self.picks)])


@dataclass(frozen=True)
class ByHand:
    """A file of a set that no Hub repository holds officially: where it goes under the weights folder, and where it
    comes from. The download names it rather than fetching an unofficial copy."""

    place: str
    origin: str
    what: str


@dataclass(frozen=True)
class Source:
    """One engine's official files. `repo` is the main repository (the one an operator may replace by a copy):
    `patterns` pick its paths, which keep their place under `into` in the weights folder; `models` pick one file each
    by name (the model's own names, in order of preference) anywhere in it, placed at `into` (by default the top of the
    weights folder, where the engines look for them). `also`: more repositories' shares of the same set; `by_hand`:
    files the Hub does not have. `folder_setting`: the Settings attribute that points the engine at another folder."""

    name: str
    title: str
    repo: str
    licence: str
    patterns: tuple[str, ...] = ()
    models: tuple[ModelFile, ...] = ()
    needs_acceptance: bool = False  # the licence restricts use: someone must accept it before a download
    into: str = ""
    revision: str | None = None
    also: tuple[Share, ...] = ()
    by_hand: tuple[ByHand, ...] = ()
    folder_setting: str = ""

    @property
    def command(self) -> str:
        """The CLI line that downloads the set, the licence accepted where it must be."""
        return f"avatarbench weights get {self.name}{' --accept-licence' if self.needs_acceptance else ''}"

    def shares(self, repo: str | None = None) -> tuple[Share, ...]:
        """Every repository's share, the main one first (from `repo` when given)."""
        main = Share(repo or self.repo, self.into, self.patterns, tuple(m.filenames for m in self.models),
                     self.revision, what=self.title)  # fmt: skip
        return (main, *self.also)

    def layout(self) -> tuple[tuple[str, ...], ...]:
        """Each file of the set under `into` (alternatives for one file together), as the engine finds them there."""
        prefix = f"{self.into}/" if self.into else ""
        needs: list[tuple[str, ...]] = []
        for share in self.shares():
            folder = f"{share.into}/" if share.into else ""
            needs += [(f"{folder}{p}".removeprefix(prefix),) for p in share.patterns]
            needs += [tuple(f"{folder}{n}".removeprefix(prefix) for n in names) for names in share.picks]
        return (*needs, *((item.place.removeprefix(prefix),) for item in self.by_hand))


LIVEPORTRAIT = Source(
    name="liveportrait",
    title="LivePortrait",
    repo="KwaiVGI/LivePortrait",
    licence="LivePortrait's weights are MIT-licensed (the KwaiVGI/LivePortrait repository).",
    patterns=("liveportrait/base_models/*.pth", "liveportrait/retargeting_models/stitching_retargeting_module.pth",
              "liveportrait/landmark.onnx"),
    folder_setting="liveportrait_dir",
)  # fmt: skip
WAV2LIP_S3FD = Source(
    name="wav2lip",
    title="Wav2Lip and S3FD",
    repo="camenduru/Wav2Lip",  # a long-standing mirror of the released files in their original format
    licence="Wav2Lip's weights are for personal, research and non-commercial use only: commercial use is not "
    "allowed (they were trained on LRS2; see the licence section of github.com/Rudrabha/Wav2Lip). S3FD's come from "
    "the face-alignment project (BSD-3-Clause).",
    models=(WAV2LIP, S3FD),
    needs_acceptance=True,
)

# MuseTalk in upstream's models/ layout under WEIGHTS_DIR/musetalk, as its download_weights.sh lays it out and
# engine/lipsync/musetalk/weights.py finds it (that room is above this one, so the layout is written out here too).
MUSETALK_FOLDER = "musetalk"
FACE_PARSE_URL = "https://drive.google.com/file/d/154JgKpzCPW82qINcVieuPH3fZ2e0P812"  # download_weights.sh's gdown id
MUSETALK_LICENCE = (
    "MuseTalk's code is MIT-licensed and its README says the trained models may be used for any purpose, commercially "
    "too, but the TMElyralab/MuseTalk Hub card is tagged CreativeML OpenRAIL-M, whose use restrictions (no unlawful "
    "use, no defaming or harassing people, no disinformation meant to harm, ...) come with the weights and what you "
    "make with them. sd-vae-ft-mse (stabilityai): MIT. whisper-tiny (openai): Apache-2.0. The BiSeNet face-parsing "
    "file (zllrunning/face-parsing.PyTorch, MIT code) is placed by hand: it was trained on CelebAMask-HQ, a dataset "
    "for non-commercial research."
)
_MUSETALK_SHARED = (
    Share("stabilityai/sd-vae-ft-mse", f"{MUSETALK_FOLDER}/sd-vae", ("config.json",),
          (("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),), formats=True,
          what="the sd-vae-ft-mse VAE"),
    Share("openai/whisper-tiny", f"{MUSETALK_FOLDER}/whisper", ("config.json", "preprocessor_config.json"),
          (("model.safetensors", "pytorch_model.bin"),), formats=True, what="the whisper-tiny audio encoder"),
)  # fmt: skip
_FACE_PARSE = ByHand(
    f"{MUSETALK_FOLDER}/face-parse-bisent/79999_iter.pth",
    FACE_PARSE_URL,
    "the BiSeNet face-parsing weights of zllrunning/face-parsing.PyTorch",
)


def _musetalk(name: str, title: str, unet: tuple[str, ...]) -> Source:
    """A MuseTalk set: one version's UNet files from TMElyralab/MuseTalk, with the VAE and Whisper beside them."""
    return Source(
        name=name, title=title, repo="TMElyralab/MuseTalk", licence=MUSETALK_LICENCE, patterns=unet,
        needs_acceptance=True, into=MUSETALK_FOLDER, also=_MUSETALK_SHARED, by_hand=(_FACE_PARSE,),
        folder_setting="musetalk_dir",
    )  # fmt: skip


MUSETALK = _musetalk("musetalk", "MuseTalk", ("musetalkV15/unet.pth", "musetalkV15/musetalk.json"))
MUSETALK_V1 = _musetalk("musetalk-v1", "MuseTalk v1.0", ("musetalk/pytorch_model.bin", "musetalk/musetalk.json"))
SOURCES = {s.name: s for s in (LIVEPORTRAIT, WAV2LIP_S3FD, MUSETALK, MUSETALK_V1)}


@dataclass(frozen=True)
class HubFile:
    path: str  # in the repository
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git's blob hash
    target: Path
    repo: str = ""  # "" : the plan's main repository
    revision: str = ""  # the commit it was listed at ("": the plan's)

    def in_place(self) -> bool:
        return self.target.is_file() and self.target.stat().st_size == self.size


@dataclass(frozen=True)
class Plan:
    """What a download fetches: the files of one commit of each repository of the set (`repo` and `revision` are the
    main one's), with their sizes, and where each goes."""

    source: Source
    repo: str
    revision: str
    endpoint: str
    root: Path  # the weights folder
    files: tuple[HubFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def repos(self) -> tuple[tuple[str, str], ...]:
        """(repository, commit) of every share, the main one first."""
        return tuple(dict.fromkeys([(self.repo, self.revision), *((f.repo or self.repo, f.revision or self.revision)
                                                                   for f in self.files)]))  # fmt: skip

    def missing(self) -> list[HubFile]:
        return [f for f in self.files if not f.in_place()]

    def by_hand_missing(self) -> list[ByHand]:
        return [item for item in self.source.by_hand if not (self.root / item.place).is_file()]

    def describe(self) -> str:
        todo = sum(f.size for f in self.missing())
        origins = ", ".join(f"{repo} at {revision[:7]}" for repo, revision in self.repos)
        lines = [f"{self.source.title} from {origins} into {self.root}: {len(self.files)} files, "
                 f"{size_text(self.total_bytes)} in all, {size_text(todo)} to fetch"]  # fmt: skip
        several = len(self.repos) > 1
        for repo, _ in self.repos:
            if several:
                lines.append(f"  from {repo}:")
            for f in self.files:
                if (f.repo or self.repo) != repo:
                    continue
                place = f.target.relative_to(self.root).as_posix()
                lines.append(f"{'    ' if several else '  '}{f.path:<64} {size_text(f.size):>9}  "
                             f"{'in place' if f.in_place() else 'to fetch'}"
                             + ("" if place == f.path else f" as {place}"))  # fmt: skip
        for item in self.source.by_hand:
            state = "in place" if (self.root / item.place).is_file() else "missing"
            lines.append(f"  by hand (not on the Hub): {item.place}  {state}; {item.what}, from {item.origin}")
        return "\n".join(lines)


@dataclass
class Fetched:
    """What a download did: the files it placed, those already in place, and what the user should know."""

    plan: Plan
    placed: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        fetched = sum(f.size for f in self.plan.files if f.target in self.placed)
        head = (f"{self.plan.source.title}: {len(self.placed)} file(s) placed ({size_text(fetched)}), "
                f"{len(self.kept)} already in place, in {self.plan.root}")  # fmt: skip
        return "\n".join([head, *self.notes])


def size_text(count: int) -> str:
    """Bytes as the Hub writes them (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def where_to_put(model: ModelFile, settings: Settings) -> str:
    """What the UI and errors say of a missing model file: where it goes, its setting, the command that downloads it
    and the terms it comes under."""
    source = next(s for s in SOURCES.values() if model in s.models)
    return (
        f"Put {model.description} at {settings.weights_dir / model.filenames[0]}, or set {PREFIX}{model.key.upper()} "
        f"to its path (`{source.command}`, or the app's Get the official weights panel, downloads it). {model.licence}"
    )


def source_named(name: str) -> Source:
    if name not in SOURCES:
        raise InputError(f"no weights called {name!r}; accepted: {', '.join(SOURCES)}")
    return SOURCES[name]


def checked_repo(repo: str | None, source: Source) -> str:
    text = (repo or "").strip() or source.repo
    if not _REPO.fullmatch(text) or ".." in text:
        # a box may hold anything: text past any real repository's length is not echoed whole (toast and log)
        shown = repr(text) if len(text) <= 100 else f"{text[:40]!r}... ({len(text):,} characters)"
        raise InputError(f"repository {shown} is not OWNER/NAME (letters, digits, '.', '_', '-'), e.g. {source.repo}")
    return text


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub read it at import, or as the environment says now."""
    from huggingface_hub import constants

    now = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return constants.is_offline_mode() or now in ("1", "ON", "YES", "TRUE")


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def place_by_hand(source: Source, settings: Settings, repo: str | None = None) -> str:
    """One line: the files to place by hand, and where (every share of a set, and the files the Hub does not have)."""
    repo = repo or source.repo
    root = settings.weights_dir
    if source.also or source.by_hand:
        pieces = []
        for share in source.shares(repo):
            names = [*share.patterns, *(" or ".join(names) for names in share.picks)]
            pieces.append(f"{_listed(names)} from huggingface.co/{share.repo} into {root / share.into}")
        for item in source.by_hand:
            folder, name = item.place.rsplit("/", 1)
            pieces.append(f"{name} ({item.what}; not on the Hub) from {item.origin} into {root / folder}")
        setting = f"{PREFIX}{source.folder_setting.upper()}" if source.folder_setting else ""
        return f"put {'; '.join(pieces)}" + (f"; or set {setting} to a folder laid out that way" if setting else "")
    if source.models:
        parts = [f"{' or '.join(m.filenames[:2])} at {root / m.filenames[0]}" for m in source.models]
        keys = " / ".join(f"{PREFIX}{m.key.upper()}" for m in source.models)
        return f"put {' and '.join(parts)} (from huggingface.co/{repo}), or set {keys} to their paths"
    wanted = ", ".join(source.patterns)
    return (f"put {wanted} (from huggingface.co/{repo}) into {root}, keeping their folders "
            f"({root / source.patterns[0].rsplit('/', 1)[0]}/…), or set {PREFIX}LIVEPORTRAIT_DIR to the folder holding "
            "base_models/")  # fmt: skip


def licence_refusal(source: Source) -> str:
    return f"{source.licence} Nothing was downloaded: accept the licence first (--accept-licence, or the app's box)."


# ---------------------------------------------------------------------------------------------- listing


def _reason(exc: BaseException) -> str:
    text = one_line(exc)
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def list_files(source: Source, settings: Settings, repo: str | None = None, endpoint: str | None = None) -> Plan:
    """The files `source` needs from each of its repositories (the main one from `repo`) at one commit each, with
    sizes and hashes, and where each goes. Offline or with the Hub unreachable: a WeightsError saying what to place
    where (after one quick attempt); a share that cannot be listed stops the whole set before anything is fetched."""
    repo = checked_repo(repo, source)
    if hub_offline():
        raise WeightsError(f"HF_HUB_OFFLINE is set, so nothing is downloaded: {place_by_hand(source, settings, repo)}")
    from huggingface_hub import constants

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    root = settings.weights_dir.resolve()
    files: list[HubFile] = []
    revisions: list[str] = []
    for index, share in enumerate(source.shares(repo)):
        info = _info(source, share, settings, repo, endpoint, main=index == 0)
        revision = info.sha or share.revision or "main"
        revisions.append(revision)
        listing = {s.rfilename: s for s in info.siblings or []}
        for path, relative in _select(source, share, listing, root, settings, repo, main=index == 0):
            size = _size(listing[path])
            if size is None:
                raise WeightsError(f"the Hub gave no size for {path} in {share.repo}; try again later")
            target = (root / relative).resolve()
            if root not in target.parents:
                raise WeightsError(f"{path} in {share.repo} would land outside the weights folder; refused")
            sibling = listing[path]
            sha256 = sibling.lfs.sha256 if sibling.lfs else None
            files.append(HubFile(path, size, sha256, sibling.blob_id, target, share.repo, revision))
    return Plan(source, repo, revisions[0], endpoint, root, tuple(files))


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed transfer raises: OSError (offline mode, the disk) and the HTTP client's errors, httpx2's under
    huggingface_hub 2 and httpx's under 1.x (an environment whose Hub library predates our pin, such as a CUDA image
    with its own packages), whichever are installed; a bare traceback otherwise."""
    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(client).HTTPError)
    return tuple(errors)


def fetch_file(repo: str, filename: str, instead: str = "a local path") -> Path:
    """One file of a Hub repository through huggingface_hub's cache: the cache first (offline too), then one quick
    listing, so that an unreachable Hub is one line at once rather than after huggingface_hub's retries (about 26 s),
    then the download. WeightsError says what went wrong, and `instead`, what the caller takes in the file's place
    (a web page has no local path to give)."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
    except ImportError:
        raise WeightsError("huggingface_hub is not installed; give a local path instead") from None
    with contextlib.suppress(Exception):  # not cached (LocalEntryNotFoundError), or no usable cache
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    where = f"{filename} of {repo} is not in the Hub's local cache"
    if hub_offline():
        raise WeightsError(f"{where} and HF_HUB_OFFLINE is set; download it or give {instead}")
    try:
        HfApi().model_info(repo, timeout=LIST_TIMEOUT_S)
    except _network_errors() as exc:
        raise WeightsError(f"{where} and the Hub is unreachable ({_reason(exc)}); give {instead}") from None
    except Exception:  # gated, private, not found: the download says which, with the token it uses
        pass
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # 404, gated, refused, the disk...
        raise WeightsError(f"could not fetch {filename} from {repo}: {_reason(exc)}") from None


def _info(source: Source, share: Share, settings: Settings, repo: str, endpoint: str, main: bool) -> Any:
    """One share's listing at one commit; every failure is one line that says what to do (the main repository is the
    user's choice, the others are the set's own)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    by_hand = place_by_hand(source, settings, repo)
    try:
        return HfApi(endpoint=endpoint).model_info(share.repo, revision=share.revision, files_metadata=True,
                                                   timeout=LIST_TIMEOUT_S)  # fmt: skip
    except GatedRepoError:
        raise WeightsError(f"{share.repo} is gated: accept its terms at {endpoint}/{share.repo} and set HF_TOKEN, or "
                           f"{by_hand}") from None  # fmt: skip
    except RepositoryNotFoundError:
        if main:
            raise InputError(f"no public model repository {share.repo} at {endpoint}; give OWNER/NAME of one that "
                             f"holds {share.wanted()}, e.g. {source.repo}") from None  # fmt: skip
        raise WeightsError(f"{endpoint} has no public model repository {share.repo} ({source.title}'s "
                           f"{share.what}), so nothing is downloaded: {by_hand}") from None  # fmt: skip
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        revision = f" at {share.revision}" if share.revision else ""
        raise WeightsError(f"the Hub answered {status} listing {share.repo}{revision}; try again later, or "
                           f"{by_hand}") from None  # fmt: skip
    except _network_errors() as exc:  # offline mode, refused, DNS, timeout
        raise WeightsError(f"the Hub is unreachable ({_reason(exc)}), so nothing is downloaded: {by_hand}") from None


def _size(sibling: Any) -> int | None:
    size = sibling.size if sibling.size is not None else (sibling.lfs.size if sibling.lfs else None)
    return None if size is None else int(size)


def _under(folder: str, path: str) -> str:
    return f"{folder}/{path}" if folder else path


def _select(
    source: Source,
    share: Share,
    listing: dict[str, Any],
    root: Path,
    settings: Settings,
    repo: str,
    main: bool,
) -> list[tuple[str, str]]:
    """(repo path, place under the weights folder) for every file the share needs; every pattern and pick must find
    one. A pick of formats takes the one already in place (the Hub's size at its place), else the preferred one."""
    chosen, absent = [], []
    for pattern in share.patterns:
        hits = sorted(p for p in listing if fnmatch.fnmatchcase(p, pattern))
        chosen += [(p, _under(share.into, p)) for p in hits]
        absent += [] if hits else [pattern]
    shallow_first = sorted(listing, key=lambda p: (p.count("/"), p))
    for names in share.picks:
        found = [next((p for p in shallow_first if p.rsplit("/", 1)[-1] == n), None) for n in names]
        candidates = [(p, _under(share.into, n)) for p, n in zip(found, names, strict=True) if p is not None]
        if not candidates:
            absent.append(" or ".join(names))
            continue
        here = [c for c in candidates if share.formats and _present(root / c[1], _size(listing[c[0]]))]
        chosen.append((here or candidates)[0])
    if absent and main:
        raise WeightsError(f"{share.repo} has no {', '.join(absent)}; give a repository that holds {share.wanted()}")
    if absent:
        raise WeightsError(f"{share.repo} has no {', '.join(absent)} ({source.title}'s {share.what}), so nothing is "
                           f"downloaded: {place_by_hand(source, settings, repo)}")  # fmt: skip
    return chosen


def _present(target: Path, size: int | None) -> bool:
    return target.is_file() and target.stat().st_size == size


# ---------------------------------------------------------------------------------------------- downloading

_IN_PROCESS = threading.Lock()


@contextlib.contextmanager
def one_download_at_a_time(settings: Settings) -> Iterator[None]:
    """One download per weights folder: a lock file (other processes) and a lock (this one's threads). A second
    request is refused at once rather than queued: the first one's progress is on someone else's screen."""
    from filelock import FileLock, Timeout

    busy = "another weights download is running on this server; try again when it has finished"
    if not _IN_PROCESS.acquire(blocking=False):
        raise WeightsError(busy)
    try:
        try:
            settings.weights_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WeightsError(f"cannot create the weights folder {settings.weights_dir}: {_reason(exc)}") from None
        lock = FileLock(settings.weights_dir / LOCK, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise WeightsError(busy) from None
        try:
            yield
        finally:
            lock.release()
    finally:
        _IN_PROCESS.release()


def staging_folder(settings: Settings, repo: str) -> Path:
    return settings.weights_dir / STAGING / repo.replace("/", "--")


def partial_path(settings: Settings, plan: Plan, file: HubFile) -> Path:
    """Where `file` grows while it downloads (named by its content, so a newer file never continues an older one)."""
    key = file.sha256 or file.blob_id or hashlib.sha256(f"{file.path}:{file.size}".encode()).hexdigest()
    return staging_folder(settings, file.repo or plan.repo) / f"{key}.part"


def _hasher(file: HubFile) -> tuple[Any, str | None]:
    if file.sha256:
        return hashlib.sha256(), file.sha256
    if file.blob_id:
        digest = hashlib.sha1(usedforsecurity=False)
        digest.update(f"blob {file.size}\0".encode())
        return digest, file.blob_id
    return None, None


class _Meter:
    """Turns bytes on disk into `progress(fraction, label)` with the run's total, a few hundred times at most."""

    def __init__(self, progress: Progress | None, total: int, present: int) -> None:
        self.progress, self.total, self.present = progress, max(total, 1), present
        self.step, self.last = max(total // REPORTS_PER_RUN, 1), -1

    def __call__(self, added: int, name: str, force: bool = False) -> None:
        self.present += added
        if self.progress is not None and (force or self.present - self.last >= self.step):
            self.last = self.present
            label = f"{size_text(self.present)} of {size_text(self.total)} · {name}"
            self.progress(min(self.present / self.total, 1.0), label)


def _fetch(plan: Plan, file: HubFile, part: Path, meter: _Meter) -> None:
    """Stream `file` into `part`, continuing from the bytes already there, and check it against the Hub's hash."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    name = file.path.rsplit("/", 1)[-1]
    repo, revision = file.repo or plan.repo, file.revision or plan.revision
    url = hf_hub_url(repo, file.path, revision=revision, endpoint=plan.endpoint)
    for _ in range(2):  # a server that ignores the Range header gets one fresh start
        have = part.stat().st_size if part.is_file() else 0
        if have > file.size:
            meter(-have, name)
            part.unlink()
            have = 0
        if have == file.size:
            break
        headers = build_hf_headers()
        if have:
            headers["Range"] = f"bytes={have}-"
        with get_session().stream("GET", url, headers=headers, timeout=TRANSFER_TIMEOUT_S) as response:
            hf_raise_for_status(response)
            continues = response.status_code == 206 and response.headers.get("Content-Range", "").startswith(
                f"bytes {have}-"
            )
            if have and not continues:
                meter(-have, name)
                part.unlink()
                continue
            with part.open("ab") as out:
                for chunk in response.iter_bytes():  # as received: a dropped connection keeps every byte
                    out.write(chunk)
                    have += len(chunk)
                    meter(len(chunk), name)
                    if have > file.size:
                        break
        break
    meter(0, name, force=True)
    _verify(file, part)


def _verify(file: HubFile, part: Path) -> None:
    size = part.stat().st_size if part.is_file() else 0
    digest, expected = _hasher(file)
    problem = None
    if size != file.size:
        problem = f"has {size} bytes where the Hub lists {file.size}"
    elif digest is not None:
        with part.open("rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
        if digest.hexdigest() != expected:
            problem = "does not match the Hub's hash"
    if problem:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{file.path} {problem}; the partial file was removed: run the download again")


def _place(part: Path, target: Path) -> None:
    """Rename into place (atomic on one file system); across file systems copy beside the target, then rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(part, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        beside = target.with_name(f".{target.name}.incoming")
        shutil.copyfile(part, beside)
        os.replace(beside, target)
        part.unlink()


def _place_copy(part: Path, target: Path) -> None:
    """A second place for the same content (two files of a set with one hash): a copy beside it, then a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    beside = target.with_name(f".{target.name}.incoming")
    shutil.copyfile(part, beside)
    os.replace(beside, target)


def _notes(plan: Plan, settings: Settings) -> list[str]:
    """Settings that point the engines elsewhere (the downloaded files are not the ones they will use), and the files
    of the set that must be placed by hand (named under the weights folder: this text reaches web visitors)."""
    source, notes = plan.source, []
    for model in source.models:
        if getattr(settings, model.key):
            notes.append(f"note: {PREFIX}{model.key.upper()} is set, so the engine uses that file, not this download")
    if source.folder_setting and getattr(settings, source.folder_setting):
        setting = f"{PREFIX}{source.folder_setting.upper()}"
        notes.append(f"note: {setting} is set, so the engine uses that folder, not this download")
    for item in plan.by_hand_missing():
        notes.append(f"by hand: {item.what} is not on the Hub: put it at {item.place} in the weights folder, from "
                     f"{item.origin}")  # fmt: skip
    return notes


def download(plan: Plan, settings: Settings, progress: Progress | None = None, accept_licence: bool = False) -> Fetched:
    """Fetch what is not in place yet (continuing partial files), check every file, then place them all: nothing of
    the set moves until every file of every share is complete and checked."""
    if plan.source.needs_acceptance and not accept_licence:
        raise InputError(licence_refusal(plan.source))
    with one_download_at_a_time(settings):
        todo = plan.missing()  # inside the lock: another process may have just placed them
        fetched = Fetched(plan, notes=_notes(plan, settings))
        fetched.kept = [f.target for f in plan.files if f not in todo]
        groups: dict[Path, list[HubFile]] = {}  # one partial file per content and repository
        for f in todo:
            groups.setdefault(partial_path(settings, plan, f), []).append(f)
        staging = settings.weights_dir / STAGING
        for part in groups:
            part.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
        total = sum(files[0].size for files in groups.values())
        present = sum(min(part.stat().st_size, files[0].size) for part, files in groups.items() if part.is_file())
        needed = total - present
        free = shutil.disk_usage(staging).free
        if needed > free:
            raise WeightsError(f"{size_text(needed)} to fetch but {size_text(free)} free in {settings.weights_dir}")
        meter = _Meter(progress, total, present)
        try:
            for part, files in groups.items():
                _fetch(plan, files[0], part, meter)
        except WeightsError:
            raise
        except _network_errors() as exc:  # the network or the disk: the partial files stay
            raise WeightsError(f"the download stopped ({_reason(exc)}) with {size_text(meter.present)} of "
                               f"{size_text(meter.total)} kept: run it again to continue") from None  # fmt: skip
        for part, files in groups.items():
            for f in files[:-1]:
                _place_copy(part, f.target)
            _place(part, files[-1].target)
        fetched.placed = [f.target for f in todo]
        for item in plan.by_hand_missing():  # the folder is ready for the file placed by hand, as upstream's script
            (plan.root / item.place).parent.mkdir(parents=True, exist_ok=True)
        for folder in {part.parent for part in groups}:
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            staging.rmdir()
    if progress is not None:
        done = f"{plan.source.title}: all {len(plan.files)} files in place"
        by_hand = plan.by_hand_missing()
        if plan.source.by_hand:
            done = f"{plan.source.title}: all {len(plan.files)} files from the Hub in place"
        if by_hand:
            done += f"; {_listed([item.place.rsplit('/', 1)[-1] for item in by_hand])} to place by hand"
        progress(1.0, done)
    return fetched


def get_weights(
    name: str,
    settings: Settings,
    repo: str | None = None,
    accept_licence: bool = False,
    progress: Progress | None = None,
    endpoint: str | None = None,
) -> Fetched:
    """List, then download: the licence is checked before anything reaches the network."""
    source = source_named(name)
    if source.needs_acceptance and not accept_licence:
        raise InputError(licence_refusal(source))
    return download(list_files(source, settings, repo, endpoint), settings, progress, accept_licence)


# ---------------------------------------------------------------------------------------------- what is here


@dataclass(frozen=True)
class Presence:
    """One model's files on this machine, as the engines look them up, and the command that gets them."""

    engine: str
    what: str
    found: Path | None
    missing: tuple[str, ...]
    source: Source
    broken: tuple[str, ...] = ()  # "name: why" of each file here that cannot be weights (a web page, empty, ...)

    @property
    def ready(self) -> bool:
        return self.found is not None and not self.missing and not self.broken

    @property
    def state(self) -> str:
        """ready, broken (a file here cannot load), partial (files missing) or missing."""
        if self.ready:
            return "ready"
        return "broken" if self.broken else "partial" if self.found else "missing"


def _liveportrait(settings: Settings) -> Presence:
    configured, name = settings.liveportrait_dir, "LivePortrait"
    if configured and configured.startswith("hf:"):
        return Presence("liveportrait", name, None, (f"{configured} (fetched when first used)",), LIVEPORTRAIT)
    folder = Path(configured).expanduser() if configured else settings.weights_dir / "liveportrait"
    for candidate in (folder, folder / "liveportrait"):  # the folder given, or the downloaded layout inside it
        if (candidate / "base_models").is_dir():
            folder = candidate
            break
    missing = tuple(n for n in LIVEPORTRAIT_NEEDS if not (folder / n).is_file())
    if len(missing) == len(LIVEPORTRAIT_NEEDS):
        return Presence("liveportrait", name, None, ("base_models/*.pth", LIVEPORTRAIT_NEEDS[-1]), LIVEPORTRAIT)
    broken = _broken(folder, [n for n in LIVEPORTRAIT_NEEDS if n not in missing])
    return Presence("liveportrait", name, folder, missing, LIVEPORTRAIT, broken)


def _broken(folder: Path, names: list[str]) -> tuple[str, ...]:
    """ "name: why" for each of these files in `folder` whose bytes show it cannot be weights."""
    return tuple(f"{name}: {problem}" for name in names if (problem := unusable_here(folder / name)))


_NAMES = {WAV2LIP.key: "Wav2Lip generator", S3FD.key: "S3FD face detector"}


def _model(model: ModelFile, settings: Settings) -> Presence:
    engine, what = model.key.split("_")[0], _NAMES.get(model.key, model.key)
    configured = getattr(settings, model.key)
    if configured and configured.startswith("hf:"):
        return Presence(engine, what, None, (f"{configured} (fetched when first used)",), WAV2LIP_S3FD)
    try:
        found = resolve(model, settings)
    except WeightsError:
        found = None
    missing = () if found else (str(configured) if configured else " or ".join(model.filenames),)
    broken = _broken(found.parent, [found.name]) if found else ()
    return Presence(engine, what, found, missing, WAV2LIP_S3FD, broken)


def _set_presence(source: Source, settings: Settings, engine: str, what: str) -> Presence:
    """A set in its folder (the setting's, else `into` in the weights folder, or the models/ folder of an upstream
    checkout inside either), file by file as `Source.layout` lists them."""
    configured = getattr(settings, source.folder_setting) if source.folder_setting else None
    needs = source.layout()
    folder = settings.weights_dir / source.into
    if configured and not configured.startswith("hf:"):
        folder = Path(configured).expanduser()
    for candidate in (folder, folder / "models"):
        if any((candidate / name).is_file() for names in needs for name in names):
            folder = candidate
            break
    missing = tuple(" or ".join(names) for names in needs if not any((folder / n).is_file() for n in names))
    if configured and configured.startswith("hf:"):  # the Hub's files when first used; by-hand files still here
        by_hand = {item.place.removeprefix(f"{source.into}/") for item in source.by_hand}
        return Presence(engine, what, None, (f"{configured} (fetched when first used)",
                                             *(m for m in missing if m in by_hand)), source)  # fmt: skip
    if len(missing) == len(needs):
        return Presence(engine, what, None, missing, source)
    here = [name for names in needs for name in names if (folder / name).is_file()]
    return Presence(engine, what, folder, missing, source, _broken(folder, here))


def inventory(settings: Settings) -> list[Presence]:
    """What each engine would load now, and what is missing (nothing here reaches the network)."""
    musetalk = _set_presence(MUSETALK, settings, "musetalk", "MuseTalk v1.5")
    return [_liveportrait(settings), _model(WAV2LIP, settings), _model(S3FD, settings), musetalk]


__all__ = [
    "FACE_PARSE_URL",
    "LIVEPORTRAIT",
    "MUSETALK",
    "MUSETALK_V1",
    "SOURCES",
    "WAV2LIP_S3FD",
    "ByHand",
    "Fetched",
    "HubFile",
    "Plan",
    "Presence",
    "Share",
    "Source",
    "download",
    "get_weights",
    "hub_offline",
    "inventory",
    "list_files",
    "one_download_at_a_time",
    "partial_path",
    "place_by_hand",
    "size_text",
    "source_named",
]
