"""Get an engine's official weights from the Hugging Face Hub into the weights folder, when the machine is online and
someone asked for them.

The files are listed from the Hub first (names, sizes, hashes at one commit), so the total is known before a byte is
fetched. Each file streams into a staging folder inside the weights folder (`.downloads/`), continues where a stopped
download left off (an HTTP Range request), is checked against the Hub's sha256 (git's blob hash for small files), and
every file of the set is moved into place only when all of them are complete: the engines never see half a file or
half a set. One download runs at a time per weights folder (a lock file), whichever process asks. Offline
(HF_HUB_OFFLINE) or with the Hub unreachable, one line says which files to put where instead.

huggingface_hub lists the files and makes the URLs; the transfer is ours because huggingface_hub 2.x no longer resumes
a stopped download (its partial files are unique to one attempt and deleted when it fails).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core.errors import InputError
from engine.core.settings import PREFIX, Settings
from engine.core.weights import S3FD, WAV2LIP, ModelFile, WeightsError, resolve

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
class Source:
    """One engine's official files on the Hub. `patterns` pick repo paths that keep their place under the weights
    folder; `models` pick one file each by name (the model's own names, in order of preference) anywhere in the repo,
    placed at the top of the weights folder where the engines look for it."""

    name: str
    title: str
    repo: str
    licence: str
    patterns: tuple[str, ...] = ()
    models: tuple[ModelFile, ...] = ()
    needs_acceptance: bool = False  # the licence restricts use: someone must accept it before a download


LIVEPORTRAIT = Source(
    name="liveportrait",
    title="LivePortrait",
    repo="KwaiVGI/LivePortrait",
    licence="LivePortrait's weights are MIT-licensed (the KwaiVGI/LivePortrait repository).",
    patterns=("liveportrait/base_models/*.pth", "liveportrait/retargeting_models/stitching_retargeting_module.pth",
              "liveportrait/landmark.onnx"),
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
SOURCES = {s.name: s for s in (LIVEPORTRAIT, WAV2LIP_S3FD)}


@dataclass(frozen=True)
class HubFile:
    path: str  # in the repository
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git's blob hash
    target: Path

    def in_place(self) -> bool:
        return self.target.is_file() and self.target.stat().st_size == self.size


@dataclass(frozen=True)
class Plan:
    """What a download fetches: the files of one commit of `repo`, with their sizes, and where each goes."""

    source: Source
    repo: str
    revision: str
    endpoint: str
    root: Path  # the weights folder
    files: tuple[HubFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def missing(self) -> list[HubFile]:
        return [f for f in self.files if not f.in_place()]

    def describe(self) -> str:
        todo = sum(f.size for f in self.missing())
        lines = [f"{self.source.title} from {self.repo} at {self.revision[:7]} into {self.root}: {len(self.files)} "
                 f"files, {size_text(self.total_bytes)} in all, {size_text(todo)} to fetch"]  # fmt: skip
        for f in self.files:
            place = f.target.relative_to(self.root).as_posix()
            lines.append(f"  {f.path:<64} {size_text(f.size):>9}  {'in place' if f.in_place() else 'to fetch'}"
                         + ("" if place == f.path else f" as {place}"))  # fmt: skip
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


def source_named(name: str) -> Source:
    if name not in SOURCES:
        raise InputError(f"no weights called {name!r}; accepted: {', '.join(SOURCES)}")
    return SOURCES[name]


def checked_repo(repo: str | None, source: Source) -> str:
    text = (repo or "").strip() or source.repo
    if not _REPO.fullmatch(text) or ".." in text:
        raise InputError(f"repository {text!r} is not OWNER/NAME (letters, digits, '.', '_', '-'), e.g. {source.repo}")
    return text


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub read it at import, or as the environment says now."""
    from huggingface_hub import constants

    now = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().upper()
    return constants.is_offline_mode() or now in ("1", "ON", "YES", "TRUE")


def place_by_hand(source: Source, settings: Settings, repo: str | None = None) -> str:
    """One line: the files to place by hand, and where."""
    repo = repo or source.repo
    root = settings.weights_dir
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
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def list_files(source: Source, settings: Settings, repo: str | None = None, endpoint: str | None = None) -> Plan:
    """The files `source` needs from `repo` at its current commit, with sizes and hashes, and where each goes.
    Offline or with the Hub unreachable: a WeightsError saying what to place where (after one quick attempt)."""
    repo = checked_repo(repo, source)
    if hub_offline():
        raise WeightsError(f"HF_HUB_OFFLINE is set, so nothing is downloaded: {place_by_hand(source, settings, repo)}")
    import httpx2
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    try:
        info = HfApi(endpoint=endpoint).model_info(repo, files_metadata=True, timeout=LIST_TIMEOUT_S)
    except GatedRepoError:
        raise WeightsError(f"{repo} is gated: accept its terms at {endpoint}/{repo} and set HF_TOKEN, or "
                           f"{place_by_hand(source, settings, repo)}") from None  # fmt: skip
    except RepositoryNotFoundError:
        raise InputError(f"no public model repository {repo} at {endpoint}; give OWNER/NAME of one that holds "
                         f"{_wanted(source)}, e.g. {source.repo}") from None  # fmt: skip
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise WeightsError(f"the Hub answered {status} listing {repo}; try again later, or "
                           f"{place_by_hand(source, settings, repo)}") from None  # fmt: skip
    except (httpx2.HTTPError, OSError) as exc:  # offline mode, refused, DNS, timeout
        raise WeightsError(f"the Hub is unreachable ({_reason(exc)}), so nothing is downloaded: "
                           f"{place_by_hand(source, settings, repo)}") from None  # fmt: skip
    listing = {s.rfilename: s for s in info.siblings or []}
    chosen = _select(source, repo, listing)
    root = settings.weights_dir.resolve()
    files = []
    for path, relative in chosen:
        sibling = listing[path]
        size = sibling.size if sibling.size is not None else (sibling.lfs.size if sibling.lfs else None)
        if size is None:
            raise WeightsError(f"the Hub gave no size for {path} in {repo}; try again later")
        target = (root / relative).resolve()
        if root not in target.parents:
            raise WeightsError(f"{path} in {repo} would land outside the weights folder; refused")
        sha256 = sibling.lfs.sha256 if sibling.lfs else None
        files.append(HubFile(path, int(size), sha256, sibling.blob_id, target))
    return Plan(source, repo, info.sha or "main", endpoint, root, tuple(files))


def _wanted(source: Source) -> str:
    return ", ".join([*source.patterns, *(" or ".join(m.filenames) for m in source.models)])


def _select(source: Source, repo: str, listing: dict[str, Any]) -> list[tuple[str, str]]:
    """(repo path, place under the weights folder) for every file the source needs; every pattern and model must
    find one."""
    chosen, absent = [], []
    for pattern in source.patterns:
        hits = sorted(p for p in listing if fnmatch.fnmatchcase(p, pattern))
        chosen += [(p, p) for p in hits]
        absent += [] if hits else [pattern]
    shallow_first = sorted(listing, key=lambda p: (p.count("/"), p))
    for model in source.models:
        pick = next(((p, n) for n in model.filenames for p in shallow_first if p.rsplit("/", 1)[-1] == n), None)
        if pick is None:
            absent.append(" or ".join(model.filenames))
        else:
            chosen.append(pick)
    if absent:
        raise WeightsError(f"{repo} has no {', '.join(absent)}; give a repository that holds {_wanted(source)}")
    return chosen


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
    return staging_folder(settings, plan.repo) / f"{key}.part"


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
    url = hf_hub_url(plan.repo, file.path, revision=plan.revision, endpoint=plan.endpoint)
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


def _notes(source: Source, settings: Settings) -> list[str]:
    """Settings that point the engines elsewhere: the downloaded files are not the ones they will use."""
    notes = []
    for model in source.models:
        if getattr(settings, model.key):
            notes.append(f"note: {PREFIX}{model.key.upper()} is set, so the engine uses that file, not this download")
    if source is LIVEPORTRAIT and settings.liveportrait_dir:
        notes.append(f"note: {PREFIX}LIVEPORTRAIT_DIR is set, so the engine uses that folder, not this download")
    return notes


def download(plan: Plan, settings: Settings, progress: Progress | None = None, accept_licence: bool = False) -> Fetched:
    """Fetch what is not in place yet (continuing partial files), check every file, then place them all."""
    import httpx2

    if plan.source.needs_acceptance and not accept_licence:
        raise InputError(licence_refusal(plan.source))
    with one_download_at_a_time(settings):
        todo = plan.missing()  # inside the lock: another process may have just placed them
        fetched = Fetched(plan, notes=_notes(plan.source, settings))
        fetched.kept = [f.target for f in plan.files if f not in todo]
        staging = staging_folder(settings, plan.repo)
        staging.mkdir(parents=True, exist_ok=True)
        parts = {f.path: partial_path(settings, plan, f) for f in todo}
        present = sum(min(p.stat().st_size, f.size) for f in todo if (p := parts[f.path]).is_file())
        needed = sum(f.size for f in todo) - present
        free = shutil.disk_usage(staging).free
        if needed > free:
            raise WeightsError(f"{size_text(needed)} to fetch but {size_text(free)} free in {settings.weights_dir}")
        meter = _Meter(progress, sum(f.size for f in todo), present)
        try:
            for f in todo:
                _fetch(plan, f, parts[f.path], meter)
        except WeightsError:
            raise
        except (OSError, httpx2.HTTPError) as exc:  # the network or the disk: the partial files stay
            raise WeightsError(f"the download stopped ({_reason(exc)}) with {size_text(meter.present)} of "
                               f"{size_text(meter.total)} kept: run it again to continue") from None  # fmt: skip
        for f in todo:
            _place(parts[f.path], f.target)
            fetched.placed.append(f.target)
        with contextlib.suppress(OSError):
            staging.rmdir()
            staging.parent.rmdir()
    if progress is not None:
        progress(1.0, f"{plan.source.title}: all {len(plan.files)} files in place")
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

    @property
    def ready(self) -> bool:
        return self.found is not None and not self.missing

    @property
    def command(self) -> str:
        accept = " --accept-licence" if self.source.needs_acceptance else ""
        return f"avatarbench weights get {self.source.name}{accept}"


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
    return Presence("liveportrait", name, folder, missing, LIVEPORTRAIT)


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
    return Presence(engine, what, found, missing, WAV2LIP_S3FD)


def inventory(settings: Settings) -> list[Presence]:
    """What each engine would load now, and what is missing (nothing here reaches the network)."""
    return [_liveportrait(settings), _model(WAV2LIP, settings), _model(S3FD, settings)]


__all__ = [
    "LIVEPORTRAIT",
    "SOURCES",
    "WAV2LIP_S3FD",
    "Fetched",
    "HubFile",
    "Plan",
    "Presence",
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
