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


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("MAX_UPLOAD_MB", "lots", "not a int"),
        ("MAX_UPLOAD_MB", "0", "out of range"),
        ("GPU_MEMORY_FRACTION", "1.5", "out of range"),
        ("TELEMETRY_INTERVAL", "0", "out of range"),
        ("DEVICE", "tpu", "auto, cpu, cuda, cuda:N"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_accepted(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({f"AVATARBENCH_{name}": value})
    assert words in str(err.value)
    if name != "DEVICE":
        assert f"AVATARBENCH_{name}" in str(err.value)


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


def test_device_spec() -> None:
    assert validate_device_spec(" cuda:0 ") == "cuda:0"
    for bad in ("cuda:", "cuda:x", "gpu", ""):
        with pytest.raises(SettingsError):
            validate_device_spec(bad)


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    from engine.core.settings import DOCUMENTED, PREFIX

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert [n for n in DOCUMENTED if f"`{PREFIX}{n}`" not in readme] == []
