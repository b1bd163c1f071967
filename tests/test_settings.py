from pathlib import Path

import pytest

from engine.core.settings import SettingsError, load_settings, validate_device_spec


def test_defaults_derive_paths_from_the_data_dir(tmp_path: Path) -> None:
    s = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path)})
    assert s.data_dir == tmp_path
    assert s.weights_dir == tmp_path / "weights"
    assert s.db_path.parent == tmp_path and s.outputs_dir == tmp_path / "outputs"
    assert s.device == "auto" and s.max_upload_bytes == 500 * 2**20
    assert s.extra == {}
    s.ensure_dirs()
    assert s.cache_dir.is_dir() and s.weights_dir.is_dir()
    relative = load_settings({"AVATARBENCH_DATA_DIR": "data", "AVATARBENCH_WEIGHTS_DIR": "w"})
    assert relative.data_dir == Path.cwd() / "data" and relative.weights_dir == Path.cwd() / "w"  # as the doctor shows


def test_values_are_read_and_unknown_variables_kept_for_the_doctor(tmp_path: Path) -> None:
    s = load_settings(
        {
            "AVATARBENCH_DATA_DIR": str(tmp_path),
            "AVATARBENCH_DEVICE": "CUDA:1",
            "AVATARBENCH_MAX_UPLOAD_MB": "20",
            "AVATARBENCH_GPU_MEMORY_FRACTION": "0.5",
            "AVATARBENCH_TELEMETRY_INTERVAL": "0.25",
            "AVATARBENCH_DEVCIE": "cpu",
        }
    )
    assert (s.device, s.max_upload_mb, s.gpu_memory_fraction, s.telemetry_interval_s) == ("cuda:1", 20, 0.5, 0.25)
    assert s.extra == {"AVATARBENCH_DEVCIE": "cpu"}
    assert str(load_settings({"AVATARBENCH_SHUTDOWN_GRACE": "-0"}).shutdown_grace_s) == "0.0"  # not "-0.0"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("MAX_UPLOAD_MB", "lots", "not a whole number; expected 1..100000"),
        ("GPU_MEMORY_FRACTION", "most", "not a number; expected 0.05..1.0"),
        ("JOB_TIME_LIMITS", "bench=0", "with 1..604800 seconds"),
        ("JOB_TIME_LIMITS", "default=604801", "with 1..604800 seconds"),
        ("KEEP_FREED_MEMORY", "maybe", "'maybe' is not on or off; expected 1 or 0"),
        ("MAX_UPLOAD_MB", "²", "not a whole number"),
        ("MAX_SIDE", "9" * 5000, "... (5000 characters) is not a whole number"),
        ("WORKERS_PER_GPU", "²", "not N or KIND=N"),
        ("WORKERS_PER_GPU", "lipsync=" + "9" * 5000, "not N or KIND=N"),
        ("WORKERS_PER_GPU", "lipsnyc=8", "'lipsnyc' is not a job kind; kinds: default, lipsync, portrait"),
        ("WORKERS_PER_GPU", "lipsync=2=3", "not N or KIND=N"),
        ("WORKERS_PER_GPU", "2,3", "default is given twice"),
        ("JOB_TIME_LIMITS", "BENCH=100", "'BENCH' is not a job kind"),
        ("JOB_TIME_LIMITS", "bench=100,bench=200", "bench is given twice"),
        ("DATA_DIR", "~nosuchuser-avatarbench/x", "give an absolute path"),
        ("DEVICE", "cuda:²", "auto, cpu, cuda, cuda:N"),
        ("MAX_UPLOAD_MB", "0", "out of range"),
        ("GPU_MEMORY_FRACTION", "1.5", "out of range"),
        ("TELEMETRY_INTERVAL", "0", "out of range"),
        ("DEVICE", "tpu", "auto, cpu, cuda, cuda:N"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_accepted(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({f"AVATARBENCH_{name}": value})
    assert words in str(err.value) and f"AVATARBENCH_{name}" in str(err.value)
    assert len(str(err.value)) < 300


def test_disk_budget_settings() -> None:
    defaults = load_settings({})
    assert (defaults.upload_cache_hours, defaults.store_budget_gb, defaults.store_max_age_days) == (6.0, 10.0, 30.0)
    s = load_settings(
        {
            "AVATARBENCH_UPLOAD_CACHE_HOURS": "0.5",
            "AVATARBENCH_STORE_BUDGET_GB": "250",
            "AVATARBENCH_STORE_MAX_AGE_DAYS": "7",
        }
    )
    assert (s.upload_cache_hours, s.store_budget_gb, s.store_max_age_days) == (0.5, 250.0, 7.0)
    for name, bad in (("UPLOAD_CACHE_HOURS", "0"), ("STORE_BUDGET_GB", "-1"), ("STORE_MAX_AGE_DAYS", "a week")):
        with pytest.raises(SettingsError, match=f"AVATARBENCH_{name}"):
            load_settings({f"AVATARBENCH_{name}": bad})


def test_a_folder_that_cannot_be_made_names_its_variable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    folders = {"AVATARBENCH_DATA_DIR": str(tmp_path / "data"), "AVATARBENCH_WEIGHTS_DIR": str(tmp_path / "afile" / "w")}
    s = load_settings(folders)
    with pytest.raises(SettingsError, match=r"cannot create the folder .*afile/w \(AVATARBENCH_WEIGHTS_DIR\)"):
        s.ensure_dirs()
    with pytest.raises(SettingsError, match=r"the folder .*afile \(AVATARBENCH_DATA_DIR\): a file is there$"):
        load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "afile")}).ensure_dirs()  # it said "File exists"
    assert s.unmakeable_weights_dir() == f"{tmp_path / 'afile'} is not a folder"
    not_yet = load_settings(folders | {"AVATARBENCH_WEIGHTS_DIR": str(tmp_path / "a" / "b")})
    assert not_yet.unmakeable_weights_dir() is None


def test_job_kinds_are_the_rooms_kinds() -> None:
    from engine.bench import jobs as bench
    from engine.core.settings import JOB_KINDS
    from engine.lipsync import jobs as lipsync
    from engine.onnx import jobs as onnx
    from engine.portrait import jobs as portrait

    assert JOB_KINDS == (lipsync.KIND, portrait.KIND, onnx.KIND, bench.KIND)
    s = load_settings({"AVATARBENCH_WORKERS_PER_GPU": "2, onnx_eval=7", "AVATARBENCH_JOB_TIME_LIMITS": "bench=14400"})
    assert s.workers_per_gpu == (("default", 2), ("onnx_eval", 7))
    assert s.job_time_limits == (("default", 3600.0), ("bench", 14400.0))


def test_device_spec() -> None:
    assert validate_device_spec(" cuda:0 ") == "cuda:0" and validate_device_spec("cuda:01") == "cuda:1"
    for bad in ("cuda:", "cuda:x", "gpu", "", "cuda:²", "cuda:١"):
        with pytest.raises(SettingsError):
            validate_device_spec(bad)


def test_the_readme_documents_every_setting() -> None:
    import re
    from pathlib import Path

    from engine.core.settings import DOCUMENTED, PREFIX

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {m[1]: m[2] for m in re.finditer(rf"^\| `{PREFIX}(\w+)` \| (.*) \|$", readme, re.MULTILINE)}
    assert sorted(rows) == sorted(DOCUMENTED)  # every setting, none other
    for name, (_, meaning) in DOCUMENTED.items():  # the same words as the System tab shows (code marks aside)
        assert rows[name].replace("`", "").replace("\\|", "|") == meaning.replace("`", ""), name


def test_a_folder_or_database_that_cannot_be_written_or_read_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing folder passed, and start-up ended in a traceback (the lock file, SQLite, Gradio's cache). Root
    writes anywhere, so the refusals are made to happen here."""
    import builtins
    import os
    import tempfile

    s = load_settings({"AVATARBENCH_DATA_DIR": str(tmp_path / "data")})
    s.ensure_dirs()
    s.db_path.write_bytes(b"")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(args[0]) if args else "")

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "TemporaryFile", lambda dir: denied(dir))
        with pytest.raises(SettingsError, match=r"cannot write in the folder .*data \(AVATARBENCH_DATA_DIR\): Perm"):
            s.ensure_dirs()
    with monkeypatch.context() as patch:
        patch.setattr(os, "listdir", denied)
        with pytest.raises(SettingsError, match=r"cannot read the folder .*weights \(AVATARBENCH_WEIGHTS_DIR\)"):
            s.ensure_dirs()
    real_access = os.access
    with monkeypatch.context() as patch:  # asked, never opened: a close drops the app's SQLite locks (test_store)
        patch.setattr(os, "access", lambda f, mode: mode != os.W_OK and real_access(f, mode))
        patch.setattr(builtins, "open", lambda f, *a, **k: pytest.fail(f"opened {f}"))
        with pytest.raises(SettingsError, match=r"cannot write the job database .* \(AVATARBENCH_DATA_DIR\)"):
            s.ensure_dirs()


def test_a_ray_address_is_checked_with_the_settings() -> None:
    with pytest.raises(SettingsError, match="AVATARBENCH_RAY_ADDRESS='nonsense' is not a Ray address"):
        load_settings({"AVATARBENCH_RAY_ADDRESS": "nonsense"})
    assert load_settings({"AVATARBENCH_RAY_ADDRESS": "ray://head:10001"}).ray_address == "ray://head:10001"


def _documented_ranges() -> dict[str, tuple[float, float]]:
    """LO..HI of every numeric setting, as its documented meaning (the README and the System tab) states it."""
    import re

    from engine.core.settings import DOCUMENTED

    found = {name: re.search(r"(?<![\w.])(\d+(?:\.\d+)?)\.\.(\d+(?:\.\d+)?)\b", meaning) for name, (_, meaning) in
             DOCUMENTED.items()}  # fmt: skip
    return {name: (float(m[1]), float(m[2])) for name, m in found.items() if m}


def _value(settings: object, field_name: str) -> object:
    """A setting's value; for KIND=N pairs, the default kind's."""
    value = getattr(settings, field_name)
    return dict(value)["default"] if isinstance(value, tuple) else value


def _as_text(value: float) -> str:
    """A number as a user writes it: 1000000, not 1e+06; 0.05 as it is."""
    return str(int(value)) if float(value).is_integer() else str(value)


def test_every_documented_range_is_the_one_enforced_and_its_refusal_says_it() -> None:
    """Each end of the range the documentation gives is accepted, just past it is refused, and the refusal names the
    range: a bound off by one, or a message that loses the range, leaves the user guessing."""
    import re

    from engine.core.settings import DOCUMENTED

    ranges = _documented_ranges()
    assert len(ranges) >= 15, ranges  # every numeric setting says its range
    for name, (lo, hi) in ranges.items():
        field_name = DOCUMENTED[name][0]
        for value in (lo, hi):
            text = _as_text(value)
            assert _value(load_settings({f"AVATARBENCH_{name}": text}), field_name) == value, (name, text)
        below = lo - 1 if lo >= 1 else (lo / 2 if lo > 0 else -1)
        for value in (below, hi + 1):
            with pytest.raises(SettingsError) as err:
                load_settings({f"AVATARBENCH_{name}": _as_text(value)})
            said = re.search(r"(\d[\d.]*)\.\.(\d[\d.]*)", str(err.value))
            assert said and (float(said[1]), float(said[2])) == (lo, hi), (name, value, str(err.value))


def test_every_documented_default_is_the_one_used() -> None:
    """The default the README and the System tab state is the value an unset variable gets."""
    import re

    from engine.core.settings import DOCUMENTED

    defaults = load_settings({})
    checked = 0
    for name, (field_name, meaning) in DOCUMENTED.items():
        said = re.search(r"\(default (\d+(?:\.\d+)?)\b", meaning)
        if said:
            assert float(_value(defaults, field_name)) == float(said[1]), name
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize(("raw", "kept"), [("1", True), ("on", True), ("True", True), ("yes", True), ("0", False),
                                           ("off", False), ("false", False), ("NO", False), ("", True)])  # fmt: skip
def test_keep_freed_memory_takes_the_usual_words_for_on_and_off(raw: str, kept: bool) -> None:
    assert load_settings({"AVATARBENCH_KEEP_FREED_MEMORY": raw}).keep_freed_memory is kept
