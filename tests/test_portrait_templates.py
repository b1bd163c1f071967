"""Motion templates: upstream LivePortrait's pickles (its three layouts, written here as its
`make_motion_template` and `dump` write them) read exactly and safely, beside our .npz; every bad file a message."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.portrait.config import PortraitError
from engine.portrait.motion import KeypointInfo, euler_angles, relative_driving, rotation_matrix
from engine.portrait.templates import read_template, save_template


def _angles(n: int, seed: int) -> KeypointInfo:
    """n frames of network-like motion (angles in degrees)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.rand(*shape, generator=g) - 0.5) * 2 * scale

    return KeypointInfo(r(n, scale=40), r(n, scale=80), r(n, scale=40), r(n, 3, scale=0.1), r(n, 21, 3, scale=0.02),
                        1.5 + r(n, scale=0.2), r(n, 21, 3, scale=0.5))  # fmt: skip


def upstream_pickle(path: Path, motion: KeypointInfo, layout: str = "new", fps: object = 25) -> Path:
    """A template as upstream writes one: a dict of plain lists of per-frame float32 arrays with a batch axis of 1,
    pickled with the default protocol. `new`: R, kp and x_s, c_eyes_lst / c_lip_lst; `old`: R_d and c_d_*_lst;
    `expression`: R only, no openness (upstream's aggrieved.pkl and friends)."""
    n = motion.exp.shape[0]
    rotation = motion.rotation.numpy()
    key_r = "R_d" if layout == "old" else "R"
    frames = []
    for i in range(n):
        frame = {
            "scale": motion.scale[i].numpy().reshape(1, 1).astype(np.float32),
            key_r: rotation[i : i + 1].astype(np.float32),
            "exp": motion.exp[i : i + 1].numpy().astype(np.float32),
            "t": motion.t[i : i + 1].numpy().astype(np.float32),
        }
        if layout == "new":
            frame["kp"] = motion.kp[i : i + 1].numpy().astype(np.float32)
            frame["x_s"] = np.zeros((1, 21, 3), np.float32)
        frames.append(frame)
    data: dict = {"n_frames": n, "output_fps": fps, "motion": frames}
    eyes = [np.array([[0.3 + 0.01 * i, 0.25]], np.float32) for i in range(n)]
    lips = [np.array([[0.1 * i]], np.float32) for i in range(n)]
    if layout == "new":
        data |= {"c_eyes_lst": eyes, "c_lip_lst": lips}
    elif layout == "old":
        data |= {"c_d_eyes_lst": eyes, "c_d_lip_lst": lips}
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


@pytest.mark.parametrize("layout", ["new", "old", "expression"])
def testupstream_pickles_are_read_exactly(tmp_path: Path, layout: str) -> None:
    motion = _angles(5, seed=1)
    saved = read_template(upstream_pickle(tmp_path / "d.pkl", motion, layout, fps=30))
    rotation = motion.rotation
    assert saved.fps == 30.0 and saved.motion.exp.shape == (5, 21, 3)
    assert torch.equal(saved.motion.rotation, rotation)  # the pickled matrices themselves, as upstream uses them
    for field in ("exp", "t", "scale"):
        assert torch.equal(getattr(saved.motion, field), getattr(motion, field))
    for field in ("pitch", "yaw", "roll"):  # the matrices' angles, for saving the motion again as .npz
        assert getattr(saved.motion, field) == pytest.approx(getattr(motion, field), abs=1e-3)
    if layout == "new":
        assert torch.equal(saved.motion.kp, motion.kp)
    else:
        assert torch.equal(saved.motion.kp, torch.zeros(5, 21, 3))  # not in the file; a driver's never used
    if layout == "expression":
        assert saved.openness is None
    else:
        eyes, lips = saved.openness
        assert eyes.shape == (5, 2) and eyes[2].tolist() == pytest.approx([0.32, 0.25])
        assert lips.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    first = read_template(tmp_path / "d.pkl", max_frames=2)
    assert first.motion.exp.shape[0] == 2 and torch.equal(first.motion.rotation, rotation[:2])
    if first.openness is not None:
        assert first.openness[0].shape == (2, 2) and first.openness[1].shape == (2,)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_is_read(tmp_path: Path, protocol: int) -> None:
    """Upstream pickles with the default protocol; one saved again with another (5 stores arrays as raw buffers,
    and was refused as asking for something else) reads the same."""
    motion = _angles(2, seed=7)
    path = upstream_pickle(tmp_path / "d.pkl", motion)
    path.write_bytes(pickle.dumps(pickle.loads(path.read_bytes()), protocol=protocol))
    assert torch.equal(read_template(path).motion.exp, motion.exp)


def test_a_pickled_template_drives_as_its_npz_twin(tmp_path: Path) -> None:
    """The same motion as upstream's pickle and as our .npz gives the same driving keypoints (the rotation as a
    matrix against one remade from its angles: float rounding apart), and saving it again keeps it."""
    motion, source = _angles(4, seed=2), _angles(1, seed=3)
    from_pickle = read_template(upstream_pickle(tmp_path / "d.pkl", motion)).motion
    save_template(tmp_path / "d.npz", motion, 25.0)
    from_npz = read_template(tmp_path / "d.npz").motion
    x_pickle = relative_driving(source, from_pickle, from_pickle.select(0))
    x_npz = relative_driving(source, from_npz, from_npz.select(0))
    assert torch.allclose(x_pickle, x_npz, atol=1e-5)
    save_template(tmp_path / "again.npz", from_pickle, 25.0)
    again = read_template(tmp_path / "again.npz").motion
    assert torch.equal(again.rotation, from_pickle.rotation)  # its own matrices, not ones remade from their angles
    assert "R" not in np.load(tmp_path / "d.npz").files  # a clip's motion is its angles: nothing more to keep
    broken = dict(np.load(tmp_path / "again.npz"))
    np.savez(tmp_path / "broken.npz", **{**broken, "R": broken["R"][:, :2]})
    with pytest.raises(PortraitError, match=r"rotations R \(frames, 3, 3\) where kept"):
        read_template(tmp_path / "broken.npz")


def test_a_template_cut_to_one_frame_is_not_a_one_frame_template(tmp_path: Path) -> None:
    """A one-frame template drives as an image (its expression against the neutral one, upstream's rule); a longer
    one cut to its first frame by max_frames is a clip's first frame, as a video cut so is (it drove as an image)."""
    save_template(tmp_path / "long.npz", _angles(4, seed=2), 25.0)
    save_template(tmp_path / "one.npz", _angles(1, seed=2), 25.0)
    assert read_template(tmp_path / "long.npz", max_frames=1).frames_in_file == 4
    assert read_template(tmp_path / "one.npz").frames_in_file == 1


def test_euler_angles_invert_rotation_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    pitch, yaw, roll = ((torch.rand(64, generator=g) - 0.5) * 2 * limit for limit in (170.0, 89.0, 170.0))
    back = euler_angles(rotation_matrix(pitch, yaw, roll))
    for got, want in zip(back, (pitch, yaw, roll), strict=True):
        assert got == pytest.approx(want, abs=1e-3)


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path: Path) -> None:
    witness = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (witness,))

    for name, payload in (("plain", Payload()), ("in a frame", {"motion": [{"scale": Payload()}]})):
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(PortraitError, match="holds only arrays"):
            read_template(path)
        assert not witness.exists(), name


def _bad(tmp_path: Path, data: object) -> Path:
    path = tmp_path / f"bad{len(list(tmp_path.glob('bad*.pkl')))}.pkl"
    path.write_bytes(pickle.dumps(data))
    return path


def test_bad_templates_are_messages(tmp_path: Path) -> None:
    good = upstream_pickle(tmp_path / "good.pkl", _angles(3, seed=4))
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(good.read_bytes()[:200])
    frame = pickle.loads(good.read_bytes())["motion"][0]
    nan = {**frame, "exp": np.full((1, 21, 3), np.nan, np.float32)}
    cases = {
        "cannot be read as LivePortrait's motion template": truncated,
        "no list of frames under 'motion'": _bad(tmp_path, {"motion": []}),
        "is not LivePortrait's motion template": _bad(tmp_path, [1, 2, 3]),
        **{
            f"its frames lack {key}": _bad(tmp_path, {"motion": [{k: v for k, v in frame.items() if k != key}]})
            for key in ("scale", "exp", "t")
        },
        "each frame's 'exp' must be 63 numbers": _bad(tmp_path, {"motion": [{**frame, "exp": np.zeros((1, 20, 3))}]}),
        "NaN or infinite": _bad(tmp_path, {"motion": [nan]}),
        "fps must be one number in 1..240": _bad(tmp_path, {"motion": [frame], "output_fps": 0}),
        r"fps must be one number in 1..240 \(it holds '25'\)": _bad(tmp_path, {"motion": [frame], "output_fps": "25"}),
        r"fps must be one number in 1..240 \(it holds 2 values\)": _bad(
            tmp_path, {"motion": [frame], "output_fps": [25, 25]}
        ),
        r"fps must be one number in 1..240 \(it holds a ragged list\)": _bad(
            tmp_path, {"motion": [frame], "output_fps": [[25, 25], [25]]}
        ),  # it said "it holds None"
        "one entry per frame": _bad(tmp_path, {"motion": [frame], "c_eyes_lst": [], "c_lip_lst": []}),
    }
    (tmp_path / "text.pkl").write_text("motion, as a text file\n" * 20)
    np.savez(tmp_path / "renamed.npz", kp=np.zeros(3))
    (tmp_path / "renamed.npz").rename(tmp_path / "renamed.pkl")
    cases |= {  # the unpickler's own words alone ("Memo value not found", "persistent id") said nothing of the file
        r"cannot be read as .*; a motion template is the \.pkl upstream's --flag_write_template": tmp_path / "text.pkl",
        r"renamed\.pkl is a zip archive \(an \.npz, or a torch\.save file\) named \.pkl": tmp_path / "renamed.pkl",
    }
    for message, path in cases.items():
        with pytest.raises(PortraitError, match=message):
            read_template(path)
    with pytest.raises(PortraitError, match=r"holds 0.1 s of motion \(3 frames at 25 fps\); at most 0.05 s"):
        read_template(good, max_seconds=0.05)
    with pytest.raises(PortraitError, match="no list of frames under 'motion'"):  # a KeyError's text, before
        read_template(_bad(tmp_path, {"frames": [frame]}))
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(PortraitError, match=r"one\.npz is one \.npy array, not a motion template"):  # a TypeError's
        read_template(tmp_path / "one.npz")
    np.savez(tmp_path / "half.npz", **{f: np.zeros((2, 21, 3)) for f in ("kp", "exp")})
    with pytest.raises(PortraitError, match="not a motion template: missing pitch"):
        read_template(tmp_path / "half.npz")
    save_template(tmp_path / "whole.npz", _angles(2, seed=5), 25.0)
    whole = (tmp_path / "whole.npz").read_bytes()
    with np.load(tmp_path / "whole.npz") as data:
        np.savez(tmp_path / "no_fps.npz", **{k: v for k, v in data.items() if k != "fps"})
    with pytest.raises(PortraitError, match="not a motion template: missing fps"):  # not "KeyError: 'fps'"
        read_template(tmp_path / "no_fps.npz")
    for name, data, reason in (
        ("junk.npz", b"not a zip", "it is not an .npz archive"),
        ("empty.npz", b"", "EOFError"),
        ("cut.npz", whole[: len(whole) // 2], "BadZipFile"),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PortraitError, match=rf"{name} cannot be read as a motion template \(.npz\): {reason}"):
            read_template(tmp_path / name)
    with np.load(tmp_path / "whole.npz") as data:  # complex numbers lost their imaginary part with a warning
        np.savez(tmp_path / "complex.npz", **{**dict(data), "exp": data["exp"] + 1j})
        np.savez(tmp_path / "ragged.npz", **{**dict(data), "t": np.zeros((3, 3))})
    for name in ("complex.npz", "ragged.npz"):
        with pytest.raises(PortraitError, match=r"needs at least one frame, .* all real numbers"):
            read_template(tmp_path / name)
    for name, change in (("zero.npz", {"scale": np.zeros(2)}), ("eyes.npz", {"eyes": np.full((2, 2), np.nan),
                                                                           "lips": np.zeros(2)})):  # fmt: skip
        with np.load(tmp_path / "whole.npz") as data:
            np.savez(tmp_path / name, **{**dict(data), **change})
        with pytest.raises(PortraitError, match="a scale of 0" if name == "zero.npz" else "NaN or infinite"):
            read_template(tmp_path / name)


def test_a_long_template_is_refused_before_its_frames_are_unpacked(tmp_path: Path) -> None:
    """A small file may hold millions of frames (zeros compress, a pickle repeats one frame by reference): its length
    is checked from the .npz headers or the pickle's list first (it took gigabytes before the refusal)."""
    import tracemalloc

    n, zeros = 200_000, lambda *shape: np.zeros(shape, np.float32)  # 8,000 s at 25 fps; its arrays alone ~110 MB
    fields = {"pitch": zeros(n), "yaw": zeros(n), "roll": zeros(n), "t": zeros(n, 3), "exp": zeros(n, 21, 3)}
    np.savez_compressed(tmp_path / "long.npz", fps=np.float64(25), scale=np.ones(n, np.float32), kp=zeros(n, 21, 3),
                        **fields)  # fmt: skip
    frame = pickle.loads(upstream_pickle(tmp_path / "one.pkl", _angles(1, seed=6)).read_bytes())["motion"][0]
    (tmp_path / "long.pkl").write_bytes(pickle.dumps({"motion": [frame] * n, "output_fps": 25}, protocol=4))
    for name in ("long.npz", "long.pkl"):
        tracemalloc.start()
        try:
            with pytest.raises(PortraitError, match=rf"^{name} holds 8000.0 s of motion \(200000 frames at 25 fps\)"):
                read_template(tmp_path / name, max_seconds=600)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 30 * 2**20, (name, peak)


@pytest.mark.parametrize(
    ("fps", "message"),
    [
        (np.array([25.0, 25.0]), "and one fps, all real numbers"),  # skipped the length check, then unpacked it all
        (np.array("abc"), "and one fps, all real numbers"),
        (np.float64(1e9), r"fps must be one number in 1..240 \(it holds 1000000000.0\)"),
        (np.float64(np.nan), "fps must be one number in 1..240"),
        (np.bool_(True), "and one fps, all real numbers"),
    ],
)
def test_a_template_with_a_bad_fps_is_refused_before_its_frames_are_unpacked(
    tmp_path: Path, fps: np.ndarray, message: str
) -> None:
    """The length limit is in seconds, so it needs the fps: a bad one skipped it, and a 2.5 MB file took 3.5 GB and
    17 s before the fps was refused. A pickle's output_fps too (1e9 made 3 million frames pass as 3 ms)."""
    import tracemalloc

    n = 200_000
    zeros = {f: np.zeros((n, *shape), np.float32) for f, shape in (("exp", (21, 3)), ("kp", (21, 3)), ("t", (3,)))}
    np.savez_compressed(tmp_path / "long.npz", fps=fps, scale=np.ones(n, np.float32), pitch=np.zeros(n),
                        yaw=np.zeros(n), roll=np.zeros(n), **zeros)  # fmt: skip
    frame = pickle.loads(upstream_pickle(tmp_path / "one.pkl", _angles(1, seed=6)).read_bytes())["motion"][0]
    pickled = {"motion": [frame] * n, "output_fps": fps.item() if fps.size == 1 else fps.tolist()}
    (tmp_path / "long.pkl").write_bytes(pickle.dumps(pickled, protocol=4))
    for name in ("long.npz", "long.pkl"):
        expected = message if name.endswith(".npz") or "fps must be" in message else "fps must be one number"
        tracemalloc.start()
        try:
            with pytest.raises(PortraitError, match=expected):
                read_template(tmp_path / name, max_seconds=600)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 30 * 2**20, (name, peak)


def test_the_length_limit_takes_exactly_max_seconds(tmp_path: Path) -> None:
    """Guards the limit's bound and its units: 5 frames at 25 fps are 0.2 s, accepted under a 0.2 s limit and
    refused under 0.19 s; a pickle without output_fps is upstream's 25 fps."""
    path = upstream_pickle(tmp_path / "d.pkl", _angles(5, seed=8), fps=25)
    assert read_template(path, max_seconds=0.2).motion.exp.shape[0] == 5
    with pytest.raises(PortraitError, match=r"holds 0.2 s of motion \(5 frames at 25 fps\)"):
        read_template(path, max_seconds=0.19)
    data = pickle.loads(path.read_bytes())
    del data["output_fps"]
    path.write_bytes(pickle.dumps(data))
    assert read_template(path).fps == 25.0


def test_newer_keys_win_where_a_pickle_holds_both_layouts(tmp_path: Path) -> None:
    """Guards the key order upstream reads: R before R_d, c_lip_lst before c_d_lip_lst."""
    motion = _angles(2, seed=9)
    data = pickle.loads(upstream_pickle(tmp_path / "d.pkl", motion).read_bytes())
    for frame in data["motion"]:
        frame["R_d"] = np.eye(3, dtype=np.float32)[None]
    data["c_d_eyes_lst"] = [np.zeros((1, 2), np.float32)] * 2
    data["c_d_lip_lst"] = [np.full((1, 1), 0.9, np.float32)] * 2
    (tmp_path / "both.pkl").write_bytes(pickle.dumps(data))
    both = read_template(tmp_path / "both.pkl")
    assert torch.equal(both.motion.rotation, motion.rotation)
    eyes, lips = both.openness
    assert eyes[1].tolist() == pytest.approx([0.31, 0.25]) and lips.tolist() == pytest.approx([0.0, 0.1])


def test_an_npz_keeps_its_openness_and_fps(tmp_path: Path) -> None:
    """Guards save and read of our .npz: eyes and lips come back as saved (not dropped, not swapped), the fps is
    kept in float64 (29.97 exactly), and a file with the eyes but not the lips is refused."""
    eyes, lips = np.array([[0.3, 0.2], [0.1, 0.4]], np.float32), np.array([0.7, 0.05], np.float32)
    save_template(tmp_path / "d.npz", _angles(2, seed=10), 29.97, (eyes, lips))
    read = read_template(tmp_path / "d.npz")
    assert read.fps == 29.97
    assert np.array_equal(read.openness[0], eyes) and np.array_equal(read.openness[1], lips)
    with np.load(tmp_path / "d.npz") as data:
        np.savez(tmp_path / "eyes.npz", **{k: v for k, v in data.items() if k != "lips"})
    with pytest.raises(PortraitError, match="both the eyes' and the lips' openness, or neither"):
        read_template(tmp_path / "eyes.npz")


def test_an_npz_of_no_frames_is_refused(tmp_path: Path) -> None:
    """Guards `frames >= 1`: a template of no frames would drive nothing and fail later, far from its cause."""
    save_template(tmp_path / "empty.npz", _angles(2, seed=11).select(slice(0, 0)), 25.0)
    with pytest.raises(PortraitError, match="needs at least one frame"):
        read_template(tmp_path / "empty.npz")


def test_a_pickle_over_the_size_limit_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the size check: a .pkl one byte over MAX_PICKLE_BYTES is refused before it is read; one of exactly
    that size is read ("at most")."""
    from engine.portrait import templates

    monkeypatch.setattr(templates, "MAX_PICKLE_BYTES", 2**20)
    (tmp_path / "big.pkl").write_bytes(b"\0" * (2**20 + 1))
    with pytest.raises(PortraitError, match=r"may be at most 1 MiB"):
        read_template(tmp_path / "big.pkl")
    motion = _angles(2, seed=19)
    good = upstream_pickle(tmp_path / "whole.pkl", motion).read_bytes()
    (tmp_path / "whole.pkl").write_bytes(good.ljust(2**20, b"\0"))  # the unpickler stops at the pickle's end
    assert torch.equal(read_template(tmp_path / "whole.pkl").motion.exp, motion.exp)


def test_source_folder_and_tiny_source_limit_are_messages(tmp_path: Path) -> None:
    from engine.portrait.config import PortraitConfig

    face = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    with pytest.raises(PortraitError, match=f"source {tmp_path.name} is a folder; give a file"):
        PortraitConfig(tmp_path, face).validate()
    with pytest.raises(PortraitError, match=r"source max dim 8 leaves no face to find: give 0 .* or at least 64"):
        PortraitConfig(face, face, source_max_dim=8).validate()
    PortraitConfig(face, face, source_max_dim=0).validate()  # no limit
    with pytest.raises(PortraitError, match="source max dim 63 leaves no face to find"):
        PortraitConfig(face, face, source_max_dim=63).validate()
    PortraitConfig(face, face, source_max_dim=64).validate()  # the smallest limit taken


def test_a_template_that_would_meet_the_baseline_is_refused_at_submit(tmp_path: Path) -> None:
    """Without LivePortrait's weights (or with the baseline engine chosen) a template is refused when the job is
    submitted, before anything is stored, instead of becoming a failed job."""
    import huggingface_hub.constants

    from engine.core.settings import Settings
    from engine.jobs.broker import Broker
    from engine.jobs.store import JobStore
    from engine.portrait.config import PortraitConfig
    from engine.portrait.jobs import PortraitJobs

    source = Path(__file__).resolve().parent.parent / "assets" / "face.jpg"
    save_template(tmp_path / "d.npz", _angles(2, seed=1), 25.0)
    store = JobStore(tmp_path / "jobs.db", tmp_path / "blobs")
    settings = Settings(data_dir=tmp_path, weights_dir=tmp_path / "weights")
    kinds = {"portrait": "engine.portrait.jobs:handle"}
    jobs = PortraitJobs(Broker(store, kinds, {"cpu": 1}), settings)  # never started: nothing runs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty Hub cache
        for engine, why in (("auto", "no LivePortrait weights were found"), ("baseline", "the baseline engine")):
            with pytest.raises(PortraitError, match=f"need LivePortrait's weights, and {why}"):
                jobs.submit(PortraitConfig(source, tmp_path / "d.npz", engine=engine), "me")
        assert store.history() == []
        jobs.submit(PortraitConfig(source, source, engine="auto"), "me")  # an image driver is the baseline's
    (stored,) = store.history()
    # the inputs are kept by content under their names; the options hold no server path of them (FileJobs.submit)
    assert {name: ref["name"] for name, ref in stored.settings["files"].items()} == {"source": "face.jpg",
                                                                                     "driving": "face.jpg"}  # fmt: skip
    assert not {"source", "driving"} & set(stored.settings["options"])


def test_the_fps_range_takes_both_its_ends(tmp_path: Path) -> None:
    """Guards the inclusive bounds of FPS_RANGE: 1 and 240 fps are taken, as the message's "1..240" says."""
    motion = _angles(2, seed=12)
    for fps in (1, 240):
        assert read_template(upstream_pickle(tmp_path / f"d{fps}.pkl", motion, fps=fps)).fps == float(fps)
        save_template(tmp_path / f"d{fps}.npz", motion, float(fps))
        assert read_template(tmp_path / f"d{fps}.npz").fps == float(fps)


def test_a_scale_too_small_to_divide_by_is_refused(tmp_path: Path) -> None:
    """Guards MIN_SCALE: a scale of 1e-9 (not 0, but relative motion divides by it) is refused like 0."""
    motion = _angles(2, seed=13)
    motion.scale[1] = 1e-9
    save_template(tmp_path / "tiny.npz", motion, 25.0)
    with pytest.raises(PortraitError, match="a scale of 0"):
        read_template(tmp_path / "tiny.npz")


def test_a_pickled_rotation_with_nan_is_refused(tmp_path: Path) -> None:
    """Guards the finiteness check of the rotation matrices themselves: a NaN in an element the Euler angles do not
    read (R[1][1]) still reaches the driver, which uses the matrix."""
    path = upstream_pickle(tmp_path / "d.pkl", _angles(2, seed=14))
    data = pickle.loads(path.read_bytes())
    data["motion"][1]["R"][0, 1, 1] = np.nan
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(PortraitError, match="NaN or infinite"):
        read_template(path)


def test_npz_openness_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    """Guards the eyes' and lips' header shapes: eyes of 3 numbers a frame or lips of a frame too few."""
    eyes, lips = np.zeros((2, 2), np.float32), np.zeros(2, np.float32)
    for name, openness in (("eyes3.npz", (np.zeros((2, 3), np.float32), lips)), ("lips1.npz", (eyes, lips[:1]))):
        save_template(tmp_path / name, _angles(2, seed=15), 25.0, openness)
        with pytest.raises(PortraitError, match="needs at least one frame"):
            read_template(tmp_path / name)


def test_bad_pickled_frames_and_openness_are_named(tmp_path: Path) -> None:
    """Guards the pickle's checks by the message each gives: frames that are not dicts, a value that is not numbers
    (a bool or a string), openness lists one short, an eyes entry of the wrong size (named as the file names it)."""
    good = upstream_pickle(tmp_path / "good.pkl", _angles(2, seed=16))
    data = pickle.loads(good.read_bytes())
    frame, eyes, lips = data["motion"][0], data["c_eyes_lst"], data["c_lip_lst"]
    cases = [
        ("no list of frames under 'motion'", {"motion": [1, 2]}),
        (r"each frame's 'scale' must be 1 numbers", {"motion": [{**frame, "scale": np.array([[True]])}]}),
        (r"each frame's 'exp' must be 63 numbers", {"motion": [{**frame, "exp": np.full((1, 21, 3), "x")}]}),
        (r"one entry per frame \(2\)", {**data, "c_lip_lst": lips[:1]}),
        (r"one entry per frame \(2\)", {**data, "c_eyes_lst": eyes[:1]}),
        (r"each frame's 'c_eyes_lst' must be 2 numbers", {**data, "c_eyes_lst": [np.zeros(3, np.float32)] * 2}),
        (r"one entry per frame \(2\)", {**data, "c_eyes_lst": 0.3}),  # a number, not a list: no len() to take
    ]
    for message, bad in cases:
        with pytest.raises(PortraitError, match=message):
            read_template(_bad(tmp_path, bad))


def test_a_pickle_of_float64_arrays_drives_in_float32(tmp_path: Path) -> None:
    """Upstream pickles float32, but a template saved again in float64 (numpy's default) is read as float32 like
    every other: float64 rotations met the float32 keypoints in the driver's matrix products."""
    motion = _angles(2, seed=20)
    data = pickle.loads(upstream_pickle(tmp_path / "d.pkl", motion).read_bytes())
    data["motion"] = [{k: np.asarray(v, np.float64) for k, v in frame.items()} for frame in data["motion"]]
    data["c_eyes_lst"] = [np.asarray(v, np.float64) for v in data["c_eyes_lst"]]
    data["c_lip_lst"] = [np.asarray(v, np.float64) for v in data["c_lip_lst"]]
    read = read_template(_bad(tmp_path, data))
    tensors = {f: getattr(read.motion, f) for f in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp", "matrix")}
    assert {f: t.dtype for f, t in tensors.items()} == dict.fromkeys(tensors, torch.float32)
    assert [a.dtype for a in read.openness] == [np.float32, np.float32]
    assert torch.allclose(read.motion.exp, motion.exp)


def test_an_npz_of_float64_arrays_drives_in_float32(tmp_path: Path) -> None:
    """Ours saves float32, but an .npz written by numpy's defaults (float64; whole numbers as int64) is read as
    float32 like every other, its rotations and openness too."""
    motion = _angles(2, seed=21)
    save_template(tmp_path / "d.npz", read_template(upstream_pickle(tmp_path / "d.pkl", motion)).motion, 25.0,
                  (np.full((2, 2), 0.3, np.float32), np.full(2, 0.1, np.float32)))  # fmt: skip
    with np.load(tmp_path / "d.npz") as data:
        widened = {k: v.astype(np.float64) for k, v in data.items()}
    np.savez(tmp_path / "wide.npz", **{**widened, "scale": np.array([2, 3], np.int64)})
    read = read_template(tmp_path / "wide.npz")
    tensors = {f: getattr(read.motion, f) for f in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp", "matrix")}
    assert {f: t.dtype for f, t in tensors.items()} == dict.fromkeys(tensors, torch.float32)
    assert [a.dtype for a in read.openness] == [np.float32, np.float32]
    assert read.motion.scale.tolist() == [2.0, 3.0] and torch.allclose(read.motion.exp, motion.exp)


def test_pickles_upstream_reads_are_read(tmp_path: Path) -> None:
    """Guards what is taken, not refused: a .PKL in capitals is a pickle; eyes without lips are no openness (not a
    refusal); keypoints missing from some frame leave them all zeros (a driver's own keypoints are never used)."""
    motion = _angles(2, seed=17)
    path = upstream_pickle(tmp_path / "D.PKL", motion)
    assert torch.equal(read_template(path).motion.exp, motion.exp)
    data = pickle.loads(path.read_bytes())
    del data["c_lip_lst"]
    del data["motion"][1]["kp"]
    read = read_template(_bad(tmp_path, data))
    assert read.openness is None and torch.equal(read.motion.kp, torch.zeros(2, 21, 3))
