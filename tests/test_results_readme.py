"""benchmarks/results/README.md quotes figures only from the result files beside it (scripts/results_readme.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
H100_LIPSYNC = "lipsync-nvidia-h100-80gb-hbm3-2026-11-22.json"


def _load_generator() -> ModuleType:
    """scripts/ is not a package: load the generator from its file, as `python scripts/results_readme.py` would."""
    spec = importlib.util.spec_from_file_location("results_readme", ROOT / "scripts" / "results_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def _readme(folder: Path = RESULTS) -> str:
    return (folder / "README.md").read_text()


def test_every_figure_in_the_results_readme_is_its_files() -> None:
    text = _readme()
    assert generator.regenerate(text, RESULTS) == text, "stale: run python scripts/results_readme.py"


def test_every_result_file_the_main_readme_cites_is_recorded() -> None:
    """The main README quotes figures by hand, each beside the file it comes from: a cited file that was renamed
    or never added leaves its figures with no source a reader can open."""
    import re

    cited = set(re.findall(r"[\w-]+-20\d\d-\d\d-\d\d[\w-]*\.(?:json|txt)", (ROOT / "README.md").read_text()))
    assert len(cited) >= 20, cited  # the Benchmarks and MuseTalk sections' files were all found
    assert sorted(name for name in cited if not (RESULTS / name).is_file()) == []


def test_every_result_file_is_shown_and_the_prose_quotes_no_figure() -> None:
    text = _readme()
    for path in generator.result_files(RESULTS):
        assert f"`{path.name}`" in text, path.name
    assert generator.quoted_figures(generator.prose(text)) == []


def test_the_figure_finder_knows_a_figure_from_a_name() -> None:
    found = generator.quoted_figures("ours is 7.15x faster at 51.9 fps over 250 frames, 2.3 ms a call, under 1%")
    assert found == ["7.15x", "51.9 fps", "250 frames", "2.3 ms", "1%"]
    names = "an H100 runs fp16 at 512x512 with libx264, a 2-core VM, Python 3.11, `--frames 4 --runs 3`"
    assert generator.quoted_figures(names) == []


@pytest.fixture
def results_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    shutil.copytree(RESULTS, folder)
    return folder


def test_a_figure_edited_in_a_result_or_in_the_readme_is_caught(results_copy: Path) -> None:
    path = results_copy / H100_LIPSYNC
    record = json.loads(path.read_text())
    ours = record["upstream"]["ours"]
    assert f"| {ours['frames_per_s']:.1f} |" in _readme(results_copy)  # the fixed-box run's frames/s, as measured
    ours["frames_per_s"] = 51.9
    path.write_text(json.dumps(record, indent=2) + "\n")
    assert generator.main(["--check", "--results", str(results_copy)]) == 1
    assert generator.main(["--results", str(results_copy)]) == 0
    assert "| 51.9 |" in _readme(results_copy) and generator.main(["--check", "--results", str(results_copy)]) == 0

    readme = results_copy / "README.md"
    readme.write_text(_readme(results_copy).replace("| 51.9 |", "| 52.0 |"))  # a hand edit inside a block
    assert generator.main(["--check", "--results", str(results_copy)]) == 1


def test_a_figure_in_the_prose_or_a_result_without_a_block_is_refused(results_copy: Path) -> None:
    readme = results_copy / "README.md"
    text = _readme(results_copy)
    readme.write_text(text.replace("## Portrait animation\n", "## Portrait animation\n\nIt ran at 52.4 frames/s.\n"))
    with pytest.raises(generator.ReadmeError, match=r"52\.4 frames/s"):
        generator.regenerate(_readme(results_copy), results_copy)
    readme.write_text(text)
    shutil.copy(results_copy / H100_LIPSYNC, results_copy / "lipsync-nvidia-h200-2026-12-02.json")
    with pytest.raises(generator.ReadmeError, match="in no block of the README: lipsync-nvidia-h200"):
        generator.regenerate(text, results_copy)
    (results_copy / "lipsync-nvidia-h200-2026-12-02.json").unlink()
    (results_copy / "mystery-cpu-only-2026-12-02.json").write_text("{}")
    with pytest.raises(generator.ReadmeError, match="no renderer for 'mystery'"):
        generator.regenerate(text.replace("*.txt", "*"), results_copy)
