"""Settings read from AVATARBENCH_* environment variables.

One frozen object, built once per process, so every module (and the doctor) sees the
same paths and limits. A bad value stops start-up with a message naming the variable
and what it accepts, rather than surfacing later as an odd failure.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from engine.core.errors import InputError, SetupError

PREFIX = "AVATARBENCH_"
JOB_KINDS = ("lipsync", "portrait", "onnx_eval", "bench")  # each room's jobs.KIND (tests/test_settings.py checks)
_MAX_ECHO = 60  # characters of a bad value quoted back


class SettingsError(InputError):
    """An AVATARBENCH_* variable holds a value we cannot use."""


def _default_data_dir() -> Path:
    # Hugging Face Spaces mounts persistent storage at /data; use it when it is writable.
    spaces_storage = Path("/data")
    if spaces_storage.is_dir() and os.access(spaces_storage, os.W_OK):
        return spaces_storage / "avatarbench"
    xdg = os.environ.get("XDG_CACHE_HOME")  # a relative one is to be ignored (the XDG base directory spec)
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "avatarbench"


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= _MAX_ECHO else f"{raw[:_MAX_ECHO]!r}... ({len(raw)} characters)"


def _whole(text: str) -> int | None:
    """A plain whole number in ASCII digits (str.isdigit also takes superscripts, which int() refuses), else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


RAY_ADDRESS = re.compile(r"auto|ray://[^\s/:]+:\d+|[^\s/:]+:\d+")
RAY_REACH_TIMEOUT_S = 5.0  # for a cluster's port to answer (ray.init retries an unreachable one for good)


ZEROGPU_ON = ("1", "t", "true")  # the values of SPACES_ZERO_GPU that `spaces` takes as on (any case); others are off


def is_zerogpu_space() -> bool:
    """SPACES_ZERO_GPU read as Hugging Face's `spaces` reads it: with any other value @spaces.GPU hands back the bare
    function, so treating it as on would run GPU work in the web process."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ZEROGPU_ON


ZEROGPU_CARD = "ZeroGPU (a card attached per job)"  # what the web process says of its GPU: `spaces` fakes one there


def ray_reachable(address: str) -> None:
    """A HOST:PORT or ray://HOST:PORT address answers on its port (ray.init retried an unreachable one for good,
    and the app never started, without a word of its own)."""
    found = re.fullmatch(r"(?:ray://)?([^:]+):(\d+)", address)
    if found is None:  # auto: Ray finds the local cluster itself, and says so when there is none
        return
    host, port = found.group(1), int(found.group(2))
    try:
        socket.create_connection((host, port), timeout=RAY_REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise SetupError(
            f"could not reach the Ray cluster at {address}: nothing answers on {host}:{port} within "
            f"{RAY_REACH_TIMEOUT_S:g} s ({exc.strerror or exc}); is `ray start --head` running there?"
        ) from None


def _ray_address(value: str | None) -> str | None:
    """Checked here with the other settings (the doctor reported nothing; the app refused it at start)."""
    if value is not None and not RAY_ADDRESS.fullmatch(value):
        raise SettingsError(f"{PREFIX}RAY_ADDRESS={_shown(value)} is not a Ray address; expected auto, HOST:PORT or "
                            "ray://HOST:10001")  # fmt: skip
    return value


def _reason(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)


def _env(env: dict[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    return value.strip() if value is not None and value.strip() else None


def _number(env: dict[str, str], name: str, default: float, lo: float, hi: float, kind: type = float):
    raw = _env(env, name)
    if raw is None:
        return kind(default)
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw) if raw.isascii() else None
    except ValueError:
        value = None
    if value is None:
        raise SettingsError(f"{PREFIX}{name}={_shown(raw)} is not {what}; expected {lo}..{hi}")
    if not lo <= value <= hi:
        raise SettingsError(f"{PREFIX}{name}={_shown(raw)} is out of range; expected {lo}..{hi}")
    return value + 0  # "-0" is 0, not a -0.0 shown back to the user


ZEROGPU_CEILING_S = 300  # ZeroGPU's largest per-call duration (its paid tier's; a visitor's tier may allow less)


def _zerogpu_max_s(env: dict[str, str]) -> int:
    """AVATARBENCH_ZEROGPU_MAX_SECONDS, refused past ZeroGPU's own per-call maximum: every ask above it fails. Every
    refusal states the range that is accepted (a bound of 1000000 was shown for a value below 10)."""
    value = _whole(_env(env, "ZEROGPU_MAX_SECONDS") or "")
    if value is not None and value > ZEROGPU_CEILING_S:
        raise SettingsError(
            f"{PREFIX}ZEROGPU_MAX_SECONDS={value} is more than ZeroGPU lets one call ask for ({ZEROGPU_CEILING_S} s; "
            f"it refuses larger asks as 'larger than the maximum allowed'); expected 10..{ZEROGPU_CEILING_S}"
        )
    return _number(env, "ZEROGPU_MAX_SECONDS", 120, 10, ZEROGPU_CEILING_S, int)


def _switch(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (_env(env, name) or "").lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise SettingsError(f"{PREFIX}{name}={raw!r} is not on or off; expected 1 or 0")


def validate_device_spec(spec: str, source: str = "device") -> str:
    """Accept auto, cpu, cuda or cuda:N; anything else is an error naming `source` (the flag or variable) and what
    is accepted."""
    spec = spec.strip().lower()
    if spec in ("auto", "cpu", "cuda"):
        return spec
    if spec.startswith("cuda:") and (index := _whole(spec[5:])) is not None:
        return f"cuda:{index}"
    raise SettingsError(f"{source} {_shown(spec)} is not one of auto, cpu, cuda, cuda:N")


def _time_limits(raw: str | None) -> tuple[tuple[str, float], ...]:
    """KIND=SECONDS pairs, comma-separated; `default` applies to the kinds not named (one hour unless given)."""
    limits = {"default": 3600.0}
    named: set[str] = set()
    for part in _parts(raw):
        kind, sep, value = (v.strip() for v in part.partition("="))
        try:
            seconds = float(value) if sep and kind and value.isascii() else -1.0
        except ValueError:
            seconds = -1.0
        if not 1 <= seconds <= 7 * 86400:
            raise SettingsError(
                f"{PREFIX}JOB_TIME_LIMITS: {_shown(part)} is not KIND=SECONDS with 1..604800 seconds, e.g. default=3600"
            )
        limits[_kind(kind, "JOB_TIME_LIMITS", named)] = seconds
    return tuple(limits.items())


def _workers_per_gpu(raw: str | None) -> tuple[tuple[str, int], ...]:
    """N or KIND=N pairs, comma-separated (a bare N is the default for kinds not named), e.g. `2,onnx_eval=7`."""
    counts = {"default": 1}
    named: set[str] = set()
    for part in _parts(raw):
        kind, sep, value = (v.strip() for v in part.partition("="))
        kind, value = (kind, value) if sep else ("default", kind)
        count = _whole(value)
        if count is None or not 1 <= count <= 64 or not kind:
            raise SettingsError(
                f"{PREFIX}WORKERS_PER_GPU: {_shown(part)} is not N or KIND=N with N in 1..64, e.g. 2 or 2,onnx_eval=7"
            )
        counts[_kind(kind, "WORKERS_PER_GPU", named)] = count
    return tuple(counts.items())


def _parts(raw: str | None) -> list[str]:
    return [p.strip() for p in (raw or "").split(",") if p.strip()]


def _kind(kind: str, name: str, named: set[str]) -> str:
    """A job kind (or `default`), each named once in a KIND=... list: a typo would silently never apply."""
    if kind not in ("default", *JOB_KINDS):
        raise SettingsError(f"{PREFIX}{name}: {_shown(kind)} is not a job kind; kinds: default, {', '.join(JOB_KINDS)}")
    if kind in named:
        raise SettingsError(f"{PREFIX}{name}: {kind} is given twice")
    named.add(kind)
    return kind


def _three_quarters_of_ram_gb() -> float:
    try:
        import psutil

        return round(0.75 * psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # no psutil or no answer: a generous fixed cap
        return 16.0


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    weights_dir: Path
    device: str = "auto"
    max_upload_mb: int = 500
    gpu_memory_fraction: float = 0.9
    telemetry_interval_s: float = 1.0
    telemetry_history_s: int = 600
    cpu_workers: int = 1
    workers_per_gpu: tuple[tuple[str, int], ...] = (("default", 1),)
    split_seconds: float = 20.0
    ray_address: str | None = None
    zerogpu_max_s: int = 120
    job_time_limits: tuple[tuple[str, float], ...] = (("default", 3600.0),)
    job_memory_gb: float = 16.0
    max_queued_jobs: int = 10
    max_queued_total: int = 200
    shutdown_grace_s: float = 10.0
    max_side: int = 2560
    max_seconds: float = 600.0
    upload_cache_hours: float = 6.0
    store_budget_gb: float = 10.0
    store_max_age_days: float = 30.0
    keep_freed_memory: bool = True
    wav2lip_checkpoint: str | None = None
    s3fd_checkpoint: str | None = None
    liveportrait_dir: str | None = None
    musetalk_dir: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "avatarbench.sqlite3"

    @property
    def prices_path(self) -> Path:
        """The operator's GPU prices (bench's cost figures); each visitor's own edits live beside it."""
        return self.data_dir / "prices.json"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def ensure_dirs(self) -> None:
        """Make the folders, and check that the app can write where it writes (the data folder, its cache and
        outputs, the job database) and read the weights folder; each problem is a SettingsError naming its
        variable. An existing folder passed before, and start-up then ended in a traceback."""
        for path, name in ((self.data_dir, "DATA_DIR"), (self.weights_dir, "WEIGHTS_DIR"),
                           (self.cache_dir, "DATA_DIR"), (self.outputs_dir, "DATA_DIR")):  # fmt: skip
            try:
                path.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # mkdir's "File exists" for a file standing where the folder goes
                raise SettingsError(f"cannot create the folder {path} ({PREFIX}{name}): a file is there") from None
            except OSError as exc:
                raise SettingsError(f"cannot create the folder {path} ({PREFIX}{name}): {_reason(exc)}") from None
            try:
                if name == "DATA_DIR":
                    with tempfile.TemporaryFile(dir=path):
                        pass
                else:  # weights may be on a read-only mount, but must be readable
                    os.listdir(path)
            except OSError as exc:
                need = "write in" if name == "DATA_DIR" else "read"
                raise SettingsError(f"cannot {need} the folder {path} ({PREFIX}{name}): {_reason(exc)}") from None
        # access(), never open(): closing any handle of a file drops every POSIX lock this process holds on it,
        # SQLite's own included, and another process's last close then deleted the WAL under our live connection
        # (the job database split: jobs queued for good, results lost at the next start)
        if self.db_path.exists() and not os.access(self.db_path, os.W_OK):
            raise SettingsError(f"cannot write the job database {self.db_path} ({PREFIX}DATA_DIR): "
                                "permission denied")  # fmt: skip

    def unmakeable_weights_dir(self) -> str | None:
        """Why the weights folder can never exist (a file on its path), or None; read only, nothing is made. A folder
        that cannot be written is not refused: weights may be on a read-only mount."""
        for path in (self.weights_dir, *self.weights_dir.parents):
            if path.exists():
                return None if path.is_dir() else f"{path} is not a folder"
        return None

    def as_dict(self) -> dict[str, object]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items() if k != "extra"}
        out.update(cache_dir=str(self.cache_dir), outputs_dir=str(self.outputs_dir), db_path=str(self.db_path))
        return out


# variable (after the prefix) -> (Settings field, meaning): the README and the System tab show
# this table, so the two never disagree.
DOCUMENTED: dict[str, tuple[str, str]] = {
    "DATA_DIR": (
        "data_dir",
        "cache, outputs and the SQLite database (default /data/avatarbench where /data is a writable folder, as on "
        "a Space with persistent storage, else $XDG_CACHE_HOME/avatarbench, ~/.cache/avatarbench without it)",
    ),
    "WEIGHTS_DIR": ("weights_dir", "where model weights are looked up (default DATA_DIR/weights)"),
    "DEVICE": ("device", "auto | cpu | cuda | cuda:N (default auto)"),
    "MAX_UPLOAD_MB": ("max_upload_mb", "largest accepted upload in MiB, 1..100000 (default 500)"),
    "GPU_MEMORY_FRACTION": (
        "gpu_memory_fraction",
        "share of each GPU's memory its workers' jobs may allocate together (a job with 1/N of the card gets 1/N of "
        "this), 0.05..1.0 (default 0.9)",
    ),
    "TELEMETRY_INTERVAL": ("telemetry_interval_s", "seconds between telemetry samples, 0.1..60 (default 1.0)"),
    "TELEMETRY_HISTORY": ("telemetry_history_s", "seconds of telemetry history kept, 10..86400 (default 600)"),
    "CPU_WORKERS": ("cpu_workers", "worker processes for CPU jobs, 1..64 (default 1: CPU timings never overlap)"),
    "WORKERS_PER_GPU": (
        "workers_per_gpu",
        "worker processes per GPU, each of whose jobs may take 1/N of the card's memory (PyTorch's per-process "
        "fraction, ONNX Runtime's gpu_mem_limit): N for every kind, or KIND=N pairs (lipsync, portrait, onnx_eval, "
        "bench), e.g. 2,onnx_eval=7; 1..64 (default 1). A timed job still takes its whole card",
    ),
    "SPLIT_SECONDS": (
        "split_seconds",
        "a lip-sync or portrait job longer than this many seconds is split into time segments over the GPUs "
        "idle when it is submitted, and reassembled, 1..7200 (default 20); needs two or more GPUs and local worker "
        "processes (not Ray or ZeroGPU)",
    ),
    "RAY_ADDRESS": (
        "ray_address",
        "run the workers as Ray actors on a cluster: auto (a cluster started on this machine with `ray start "
        "--head`) or ray://HOST:10001 (default: unset, local worker processes; needs the ray extra)",
    ),
    "ZEROGPU_MAX_SECONDS": (
        "zerogpu_max_s",
        "on a ZeroGPU Space, the most GPU time one job asks @spaces.GPU for, in seconds, 10..300 (default 120; "
        "ZeroGPU refuses a call that asks for more than its per-call maximum, at most 300 s); each job asks for what "
        "its length needs, learnt from earlier jobs of its kind, and one that needs more is refused when submitted",
    ),
    "JOB_TIME_LIMITS": (
        "job_time_limits",
        "seconds a job may run, per kind: KIND=SECONDS pairs and default=SECONDS, e.g. default=3600,bench=14400 "
        "(default: default=3600); a job past it is stopped with its worker",
    ),
    "JOB_MEMORY_GB": (
        "job_memory_gb",
        "host memory a job's worker may use, 0.25..4096 GB (default: 3/4 of the machine's RAM); past it the job "
        "fails with that reason",
    ),
    "MAX_QUEUED_JOBS": (
        "max_queued_jobs",
        "jobs one person (a login, a browser, a session) may have waiting in the queue at once, 1..10000 "
        "(default 10): the queue is first come, first served, so one person's many jobs would hold everyone "
        "else's; a job split over GPUs counts once",
    ),
    "MAX_QUEUED_TOTAL": (
        "max_queued_total",
        "jobs waiting in the queue at once from everyone together, 1..1000000 (default 200): the per-person limit "
        "counts sessions, which a script can open by the hundred",
    ),
    "SHUTDOWN_GRACE": (
        "shutdown_grace_s",
        "seconds running jobs get to finish when the app stops (SIGTERM, Ctrl-C), 0..3600 (default 10)",
    ),
    "MAX_SIDE": (
        "max_side",
        "largest accepted image/video side in pixels, 64..8192 (default 2560: 4K is refused); checked from the "
        "file's header before anything is decoded, as is a cap of 40 megapixels",
    ),
    "MAX_SECONDS": (
        "max_seconds",
        "longest accepted video or audio in seconds, 1..7200 (default 600); checked from the header, and frame by "
        "frame while reading when the header states no duration",
    ),
    "UPLOAD_CACHE_HOURS": (
        "upload_cache_hours",
        "hours Gradio keeps uploads and the copies of results it served (checked every quarter of that, at most "
        "hourly), 0.1..720 (default 6: a job's inputs are "
        "copied into the job store when it is submitted, so Gradio's copies only serve the page in front of you)",
    ),
    "STORE_BUDGET_GB": (
        "store_budget_gb",
        "GB the stored job inputs (DATA_DIR/blobs) and outputs (DATA_DIR/outputs) may take together, 0.1..100000 "
        "(default 10: half of Spaces' smallest persistent disk, the rest left to weights and caches); past it the "
        "least recently used go first, never a queued or running job's",
    ),
    "STORE_MAX_AGE_DAYS": (
        "store_max_age_days",
        "days a stored job input or output is kept after its last use, 0.1..36500 (default 30); the job's record "
        "stays and says which file was removed",
    ),
    "KEEP_FREED_MEMORY": (
        "keep_freed_memory",
        "1 | 0 (default 1): processes that run models (job workers, and the lipsync, avatar, portrait, bench and "
        "onnx eval commands) keep the memory they free instead of returning it to the kernel after every layer "
        "(glibc on Linux; elsewhere nothing changes); their RSS stays at its high-water mark; the web process never "
        "does this",
    ),
    "WAV2LIP_CHECKPOINT": (
        "wav2lip_checkpoint",
        "Wav2Lip generator checkpoint: a path, or hf:OWNER/REPO/FILE (downloaded only when online); "
        "default: WEIGHTS_DIR/wav2lip_gan.pth or wav2lip.pth",
    ),
    "S3FD_CHECKPOINT": ("s3fd_checkpoint", "S3FD face detector checkpoint (default: WEIGHTS_DIR/s3fd.pth)"),
    "LIVEPORTRAIT_DIR": (
        "liveportrait_dir",
        "LivePortrait weights: the official pretrained_weights folder or its liveportrait/ subfolder (holding "
        "base_models/ and retargeting_models/; default WEIGHTS_DIR/liveportrait)",
    ),
    "MUSETALK_DIR": (
        "musetalk_dir",
        "MuseTalk weights: a folder in upstream's models/ layout (musetalkV15/, sd-vae/, whisper/, "
        "face-parse-bisent/) or an upstream checkout holding models/ (default: WEIGHTS_DIR/musetalk, then the Hub's "
        "local cache)",
    ),
}


def documented_values(settings: Settings) -> list[tuple[str, str, str]]:
    """(variable, current value, meaning) for every documented setting."""

    def shown(value: object) -> str:
        if isinstance(value, tuple):  # KIND=SECONDS pairs
            return ",".join(f"{k}={v:g}" for k, v in value)
        return str(value)

    return [(PREFIX + name, shown(getattr(settings, f)), meaning) for name, (f, meaning) in DOCUMENTED.items()]


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build settings from the environment (or the mapping given, for tests)."""
    env = dict(os.environ if env is None else env)
    data_dir = _folder(env, "DATA_DIR", _default_data_dir)
    weights_dir = _folder(env, "WEIGHTS_DIR", lambda: data_dir / "weights")
    known = {PREFIX + name for name in DOCUMENTED}
    return Settings(
        data_dir=data_dir,
        weights_dir=weights_dir,
        device=validate_device_spec(_env(env, "DEVICE") or "auto", f"{PREFIX}DEVICE"),
        max_upload_mb=_number(env, "MAX_UPLOAD_MB", 500, 1, 100_000, int),
        gpu_memory_fraction=_number(env, "GPU_MEMORY_FRACTION", 0.9, 0.05, 1.0),
        telemetry_interval_s=_number(env, "TELEMETRY_INTERVAL", 1.0, 0.1, 60.0),
        telemetry_history_s=_number(env, "TELEMETRY_HISTORY", 600, 10, 86_400, int),
        cpu_workers=_number(env, "CPU_WORKERS", 1, 1, 64, int),
        workers_per_gpu=_workers_per_gpu(_env(env, "WORKERS_PER_GPU")),
        split_seconds=_number(env, "SPLIT_SECONDS", 20.0, 1.0, 7200.0),
        ray_address=_ray_address(_env(env, "RAY_ADDRESS")),
        zerogpu_max_s=_zerogpu_max_s(env),
        job_time_limits=_time_limits(_env(env, "JOB_TIME_LIMITS")),
        job_memory_gb=_number(env, "JOB_MEMORY_GB", _three_quarters_of_ram_gb(), 0.25, 4096.0),
        max_queued_jobs=_number(env, "MAX_QUEUED_JOBS", 10, 1, 10_000, int),
        max_queued_total=_number(env, "MAX_QUEUED_TOTAL", 200, 1, 1_000_000, int),
        shutdown_grace_s=_number(env, "SHUTDOWN_GRACE", 10.0, 0.0, 3600.0),
        max_side=_number(env, "MAX_SIDE", 2560, 64, 8192, int),
        max_seconds=_number(env, "MAX_SECONDS", 600.0, 1.0, 7200.0),
        upload_cache_hours=_number(env, "UPLOAD_CACHE_HOURS", 6.0, 0.1, 720.0),
        store_budget_gb=_number(env, "STORE_BUDGET_GB", 10.0, 0.1, 100_000.0),
        store_max_age_days=_number(env, "STORE_MAX_AGE_DAYS", 30.0, 0.1, 36_500.0),
        keep_freed_memory=_switch(env, "KEEP_FREED_MEMORY", True),
        wav2lip_checkpoint=_env(env, "WAV2LIP_CHECKPOINT"),
        s3fd_checkpoint=_env(env, "S3FD_CHECKPOINT"),
        liveportrait_dir=_env(env, "LIVEPORTRAIT_DIR"),
        musetalk_dir=_env(env, "MUSETALK_DIR"),
        extra={k: v for k, v in env.items() if k.startswith(PREFIX) and k not in known},
    )


def _folder(env: dict[str, str], name: str, default) -> Path:
    raw = _env(env, name)
    try:
        return Path(raw).expanduser().absolute() if raw else Path(default())  # a relative one: from here, once
    except RuntimeError as exc:  # ~user of no such user, or no home folder for the default
        if raw:
            raise SettingsError(f"{PREFIX}{name}={_shown(raw)}: {exc}; give an absolute path") from None
        raise SettingsError(f"{exc}: set {PREFIX}{name} to an absolute path") from None


def settings_despite_bad_values(env: dict[str, str] | None = None) -> tuple[Settings, list[str]]:
    """The settings with every unusable variable left at its default, and what was wrong with each: the doctor
    reports them all and still runs its other checks, where start-up stops at the first."""
    env = dict(os.environ if env is None else env)
    problems = []
    for name in DOCUMENTED:
        if PREFIX + name in env:
            try:  # each alone, beside a data folder that needs no home folder
                load_settings({PREFIX + "DATA_DIR": os.sep, PREFIX + name: env[PREFIX + name]})
            except SettingsError as exc:
                problems.append(str(exc))
                del env[PREFIX + name]
    return load_settings(env), problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
