"""The doctor's checks of what a run needs besides the GPU: the Python it runs on, video encoding and decoding
(NVENC, NVDEC, libx264), writable folders with room on their disks, the AVATARBENCH_* settings, the model weights the
engines would load, and the Ray cluster where jobs are to run on one. Each is a package, a folder, a setting or a file
away from working, and says which."""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from engine.core.settings import DOCUMENTED, PREFIX, Settings
from engine.system.checks import INFO, OK, PROBLEM, WARNING, Check, Context

MIN_FREE_BYTES = 5 * 2**30


def check_python(ctx: Context) -> Check:
    version = platform.python_version()
    found = f"Python {version} ({platform.python_implementation()}) on {platform.system()} {platform.machine()}"
    in_venv = sys.prefix != sys.base_prefix
    return Check("python", OK, found, details={"executable": sys.executable, "virtualenv": in_venv})


def check_video(ctx: Context) -> Check:
    try:
        import av
    except ImportError as exc:
        return Check("video-encoders", PROBLEM, f"PyAV does not import: {exc}", "pip install av")
    from engine.core.media import available_encoders, probe_encoder, probe_nvdec

    listed = available_encoders()
    nvenc = probe_encoder("h264_nvenc")  # the probes keep FFmpeg's own lines off the terminal; errors carry them
    x264 = probe_encoder("libx264")
    nvdec = probe_nvdec()
    details = {
        "pyav": av.__version__,
        "listed": listed,
        "ffmpeg_cli": shutil.which("ffmpeg"),
        "h264_nvenc": asdict(nvenc),
        "libx264": asdict(x264),
        "nvdec": asdict(nvdec),
    }
    found = f"PyAV {av.__version__}; encoders listed: {', '.join(listed) or 'none'}; "
    decode = "; NVDEC decodes" if nvdec.ran_on == "nvdec" else f"; NVDEC does not decode ({nvdec.reason})"
    video_in_docker = "in Docker add NVIDIA_DRIVER_CAPABILITIES=compute,utility,video"
    if nvenc.works and nvdec.ran_on == "nvdec":
        return Check("video-encoders", OK, found + "NVENC (h264_nvenc) encodes" + decode, details=details)
    if x264.works and (ctx.no_gpu or ctx.zero_gpu):  # NVENC's error stays in the details: no GPU, or ZeroGPU's
        return Check("video-encoders", OK, f"PyAV {av.__version__}; libx264 encodes on the CPU", details=details)
    if nvenc.works:
        fix = f"Videos are decoded on the CPU. NVDEC needs the driver's libnvcuvid.so.1; {video_in_docker}."
        return Check("video-encoders", WARNING, found + "NVENC (h264_nvenc) encodes" + decode, fix, details)
    why = f"NVENC does not work ({nvenc.error})" + decode
    if x264.works:
        fix = (
            "Videos are encoded with libx264 on the CPU. NVENC needs an NVIDIA GPU with an encoder (not "
            "A100/H100/H200, which decode on NVDEC but have no encoder) and the driver's libnvidia-encode.so; "
            f"NVDEC the driver's libnvcuvid.so.1; {video_in_docker}."
        )
        return Check("video-encoders", WARNING, found + why + "; libx264 works", fix, details)
    return Check(
        "video-encoders",
        PROBLEM,
        found + why + f"; libx264 fails too ({x264.error})",
        "pip install --force-reinstall av (its wheels bundle FFmpeg with libx264)",
        details,
    )


def _dir_status(path: Path) -> tuple[bool, int | None, str]:
    """Whether the folder can be written (made where missing), its disk's free bytes and why not; a folder this user
    may not enter is an answer ("Permission denied"), not a failure of the check."""
    probe, free = path, None
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free if probe.exists() else None
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        return True, free, ""
    except OSError as exc:
        return False, free, str(exc)


def check_disk(ctx: Context) -> Check:
    s = ctx.settings
    paths = {"data": s.data_dir, "weights": s.weights_dir, "cache": s.cache_dir, "outputs": s.outputs_dir}
    details, problems, low = {}, [], []
    for label, path in paths.items():
        writable, free, error = _dir_status(path)
        details[label] = {"dir": str(path), "writable": writable, "free_bytes": free}
        if not writable:
            problems.append(f"{label} dir {path} is not writable ({error})")
        elif free is not None and free < MIN_FREE_BYTES:
            low.append(f"{label} dir {path} has only {free / 2**30:.1f} GiB free")
    free_data = details["data"]["free_bytes"]
    found = f"data dir {s.data_dir} ({free_data / 2**30:.1f} GiB free)" if free_data else f"data dir {s.data_dir}"
    if problems:
        return Check(
            "disk",
            PROBLEM,
            "; ".join(problems),
            f"Point {PREFIX}DATA_DIR (and {PREFIX}WEIGHTS_DIR) at a writable folder.",
            details,
        )
    if low:
        return Check(
            "disk",
            WARNING,
            "; ".join(low),
            f"Free space, or point {PREFIX}DATA_DIR at a larger disk: model weights, TensorRT "
            "engine caches and output videos need several GiB.",
            details,
        )
    return Check("disk", OK, found + "; all folders writable", details=details)


def check_settings(ctx: Context) -> Check:
    s = ctx.settings
    details = s.as_dict()
    found = (
        f"device {s.device}, GPU memory fraction {s.gpu_memory_fraction}, uploads up to {s.max_upload_mb} MiB, "
        f"telemetry every {s.telemetry_interval_s}s"
    )
    unknown = f"; unknown variables: {', '.join(sorted(s.extra))}" if s.extra else ""
    if ctx.settings_problems:
        return Check(
            "settings",
            PROBLEM,
            "; ".join(ctx.settings_problems)
            + " (this report used the defaults instead; the app would not start)"
            + unknown,
            "Fix or unset these variables" + (" and check the unknown ones' spelling." if unknown else "."),
            details,
        )
    if s.extra:
        return Check(
            "settings",
            WARNING,
            found + unknown,
            "Check the spelling; known variables: " + ", ".join(PREFIX + k for k in DOCUMENTED),
            details,
        )
    return Check("settings", OK, found, details=details)


def check_weights(ctx: Context) -> Check:
    from engine.core.errors import InputError
    from engine.core.hub import where_to_put
    from engine.core.weights import S3FD, WAV2LIP, WeightsError, hub_reference, resolve

    found, missing, broken = [], [], []
    for model in (WAV2LIP, S3FD):
        reference = str(getattr(ctx.settings, model.key) or "")
        try:
            if reference.startswith("hf:"):  # never fetched here: resolving it downloaded the file (416 MB)
                hub_reference(reference)
                found.append(f"{model.filenames[0]}: {reference} (from the Hub when a run first needs it)")
                continue
            path = resolve(model, ctx.settings)
        except (WeightsError, InputError) as exc:  # a path that is not there, an hf: reference of another shape
            broken.append(str(exc))
            continue
        (found if path else missing).append(f"{model.filenames[0]}: {path}" if path else model)
    settings = ctx.settings
    for variable, configured in (
        ("LIVEPORTRAIT_DIR", settings.liveportrait_dir),
        ("MUSETALK_DIR", settings.musetalk_dir),
    ):
        folder = Path(configured).expanduser() if configured and not configured.startswith("hf:") else None
        if folder is not None and not folder.is_dir():  # refused only when a run needs it, then as the run's error
            state = "is a file" if folder.exists() else "does not exist"
            broken.append(f"{configured} (set by {PREFIX}{variable}) {state}; expected the folder of official weights")
    unloadable, commands = _unloadable_weights(settings)
    details = {"found": found, "missing": [m.filenames[0] for m in missing], "broken": broken + unloadable}
    if broken or unloadable:
        fixes = (["Fix the path in the setting, or unset it."] if broken else []) + (
            [f"Replace each file that cannot load with the official one: {' or '.join(commands)} (or the app's Get "
             "the official weights panel) fetches it again."] if unloadable else []
        )  # fmt: skip
        return Check("weights", PROBLEM, "; ".join(broken + unloadable), " ".join(fixes), details)
    text = "; ".join(found) if found else "no model weights configured"
    if missing:  # not a fault: the weight-free engines run instead, and the hint says where the files go
        names = ", ".join(m.filenames[0] for m in missing)
        return Check(
            "weights",
            INFO,
            f"{text}; missing: {names} (the weight-free engines are used instead)",
            "\n".join(where_to_put(m, ctx.settings) for m in missing),
            details,
        )
    return Check("weights", OK, text, details=details)


def _unloadable_weights(settings: Settings) -> tuple[list[str], list[str]]:
    """Weight files the engines would load that cannot be weights (a web page, an empty file, a Git LFS pointer, a
    zip cut short), and the commands that fetch them again: the doctor said "ok" of them and the run refused them."""
    from engine.core.hub import inventory

    broken = [item for item in inventory(settings) if item.found is not None and item.broken]
    problems = [f"{item.found.parent if item.found.is_file() else item.found}/{problem}"  # problem: "name: why"
                for item in broken for problem in item.broken]  # fmt: skip
    return problems, list(dict.fromkeys(f"`{item.source.command}`" for item in broken))


def check_ray(ctx: Context) -> Check:
    """When the workers are to be a Ray cluster's actors: ray installed and the cluster answering (an unreachable
    address kept the app from starting while the doctor said nothing)."""
    import importlib.util

    from engine.core.errors import SetupError
    from engine.core.settings import ray_reachable

    address = ctx.settings.ray_address
    if address is None:
        return Check("ray", OK, f"not used: jobs run in this machine's worker processes ({PREFIX}RAY_ADDRESS unset)")
    if importlib.util.find_spec("ray") is None:
        return Check("ray", PROBLEM, f"{PREFIX}RAY_ADDRESS={address} but ray is not installed",
                     "pip install 'avatarbench[ray]' (or unset the variable)")  # fmt: skip
    if address == "auto":
        return Check("ray", INFO, "auto: the app joins the cluster started on this machine (ray start --head)")
    try:
        ray_reachable(address)
    except SetupError as exc:
        return Check("ray", PROBLEM, str(exc), f"Start the cluster, or fix {PREFIX}RAY_ADDRESS.")
    return Check("ray", OK, f"the Ray cluster at {address} answers")
