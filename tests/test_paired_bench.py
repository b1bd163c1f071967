"""benchmarks/paired.py: side-by-side process runs (order, peak RSS, exit codes) and the ratio, median and spread maths.

The commands are tiny Python processes with known memory; nothing here asserts a time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def _load() -> ModuleType:
    """From its file, as the benchmark scripts use it (benchmarks/ is not installed)."""
    spec = importlib.util.spec_from_file_location("paired", ROOT / "benchmarks" / "paired.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["paired"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


paired = _load()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# ------------------------------------------------------------------------------------------------------ order


def test_two_sides_alternate_a_b_a_b():
    assert paired.alternation(["ours", "upstream"], 3) == ["ours", "upstream"] * 3


def test_three_sides_run_once_per_round_in_the_given_order():
    assert paired.alternation(["a", "b", "c"], 2) == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize(("names", "rounds"), [(["a", "b"], 0), (["a", "a"], 2), ([], 1)])
def test_alternation_refuses_no_rounds_and_repeated_or_missing_sides(names, rounds):
    with pytest.raises(ValueError):
        paired.alternation(names, rounds)


def test_interleaved_calls_the_sides_in_turn_and_keeps_each_sides_rounds():
    calls: list[tuple[str, int]] = []
    seen: list[tuple[str, int, dict]] = []

    def side(name: str):
        def run(round_: int) -> dict:
            calls.append((name, round_))
            return {"wall_s": 10 * (round_ + 1) + (name == "upstream")}

        return run

    runs = paired.interleaved({"ours": side("ours"), "upstream": side("upstream")}, 3, report=lambda *a: seen.append(a))
    assert calls == [("ours", 0), ("upstream", 0), ("ours", 1), ("upstream", 1), ("ours", 2), ("upstream", 2)]
    assert [r["wall_s"] for r in runs["ours"]] == [10, 20, 30]
    assert [r["wall_s"] for r in runs["upstream"]] == [11, 21, 31]
    assert [(name, round_) for name, round_, _ in seen] == calls


# ------------------------------------------------------------------------------------------------------ maths


def test_spread_of_three_values():
    stats = paired.spread([3.0, 1.0, 2.0])
    assert stats == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0, "q1": 1.5, "q3": 2.5}


def test_spread_of_an_even_count_has_the_middle_mean_as_median():
    stats = paired.spread([4, 1, 3, 2])
    assert stats["median"] == 2.5 and stats["min"] == 1 and stats["max"] == 4
    assert 1 <= stats["q1"] <= stats["median"] <= stats["q3"] <= 4


def test_spread_of_one_value_and_of_none():
    assert paired.spread([7]) == {"n": 1, "median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0}
    with pytest.raises(ValueError):
        paired.spread([])


def test_pair_ratios_divide_within_each_round_not_the_medians():
    upstream = [{"wall_s": 10.0}, {"wall_s": 30.0}, {"wall_s": 12.0}]
    ours = [{"wall_s": 5.0}, {"wall_s": 10.0}, {"wall_s": 8.0}]
    ratios = paired.pair_ratios(upstream, ours, "wall_s")
    assert ratios["per_pair"] == [2.0, 3.0, 1.5]
    assert ratios["median"] == 2.0 and ratios["min"] == 1.5 and ratios["max"] == 3.0
    # the ratio of the medians would be 12 / 8 = 1.5: not what is reported
    assert ratios["median"] != paired.spread([10, 30, 12])["median"] / paired.spread([5, 10, 8])["median"]


def test_pair_ratios_need_whole_rounds():
    with pytest.raises(ValueError):
        paired.pair_ratios([{"x": 1}], [{"x": 1}, {"x": 2}], "x")


def test_compare_gives_time_as_reference_over_side_and_memory_as_side_over_reference():
    runs = {
        "ours": [{"wall_s": 2.0, "peak_rss_bytes": 100}, {"wall_s": 4.0, "peak_rss_bytes": 200}],
        "upstream": [{"wall_s": 6.0, "peak_rss_bytes": 400}, {"wall_s": 8.0, "peak_rss_bytes": 400}],
    }
    result = paired.compare(runs, reference="upstream")
    assert set(result["ratios"]) == {"ours"}
    wall, peak = result["ratios"]["ours"]["wall_s"], result["ratios"]["ours"]["peak_rss_bytes"]
    assert wall["of"] == "upstream / ours" and wall["per_pair"] == [3.0, 2.0] and wall["median"] == 2.5
    assert peak["of"] == "ours / upstream" and peak["per_pair"] == [0.25, 0.5] and peak["median"] == 0.375
    assert result["sides"]["ours"]["summary"]["wall_s"]["median"] == 3.0
    assert result["sides"]["upstream"]["runs"] == runs["upstream"]


def test_compare_leaves_out_a_ratio_a_side_has_no_figure_for():
    runs = {
        "ours": [{"wall_s": 2.0, "per_frame_s": 0.5, "peak_rss_bytes": 1}],
        "upstream": [{"wall_s": 4.0, "peak_rss_bytes": 1}],
    }
    ratios = paired.compare(runs, "upstream", time_keys=("per_frame_s", "wall_s"))["ratios"]["ours"]
    assert set(ratios) == {"wall_s", "peak_rss_bytes"}


def test_table_lines_name_every_side_and_ratio():
    runs = {"ours": [{"wall_s": 2.0, "peak_rss_bytes": 2**30}], "upstream": [{"wall_s": 3.0, "peak_rss_bytes": 2**31}]}
    text = "\n".join(paired.table_lines(paired.compare(runs, "upstream")))
    assert "ours" in text and "upstream / ours" in text and "1.50x" in text and "0.50x" in text and "2.00 GiB" in text


# ------------------------------------------------------------------------------------------------------ processes


def test_peak_rss_sees_what_the_process_touched():
    small = paired.run_measured(python("pass"))
    big = paired.run_measured(python("b = b'\\x01' * (300 * 2**20)"))
    assert small.returncode == 0 and big.returncode == 0
    assert big.peak_rss_bytes >= 300 * MIB
    assert big.peak_rss_bytes - small.peak_rss_bytes >= 250 * MIB
    assert small.peak_rss_bytes < 200 * MIB
    assert small.wall_s > 0


def test_output_and_exit_status_come_back():
    run = paired.run_measured(
        python("import sys; print('to stdout'); print('to stderr', file=sys.stderr); sys.exit(3)")
    )
    assert run.returncode == 3
    assert "to stdout" in run.output and "to stderr" in run.output
    error = paired.ProcessFailed(run)
    assert "exited with 3" in str(error) and "to stderr" in str(error)


def test_a_process_past_its_time_is_killed():
    run = paired.run_measured(python("import time; time.sleep(60)"), timeout_s=0.5)
    assert run.returncode < 0


def test_environment_and_folder_are_the_ones_given(tmp_path):
    code = "import os; print(os.getcwd()); print(os.environ['PAIRED_TEST'])"
    run = paired.run_measured(python(code), cwd=tmp_path, env={"PAIRED_TEST": "seen"})
    assert run.output.split() == [str(tmp_path), "seen"]


def test_command_text_names_the_long_paths():
    command = ["/venv/bin/python", "/repo/benchmarks/x.py", "--in", "/tmp/work1/a b.wav", "--root", "/repo/assets"]
    text = paired.command_text(command, {"/tmp/work1": "<work>", "/repo/": "", "/venv/bin/python": "python"})
    assert text == "python benchmarks/x.py --in '<work>/a b.wav' --root assets"


def test_our_command_is_the_console_script_or_the_engine_module():
    command = paired.avatarbench_command()
    assert Path(command[0]).name == "avatarbench" or command[1:] == ["-m", "engine"]


def test_a_command_that_cannot_start_fails_with_the_reason(tmp_path):
    run = paired.run_measured([str(tmp_path / "no-such-program")])
    assert run.returncode != 0
    assert "no-such-program" in run.output


def test_the_cpu_is_named_with_its_widest_vector_unit(tmp_path):
    """Side-by-side ratios on the CPU depend on it: the results README holds two CPU types' files."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.recording import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2\n\nprocessor\t: 1\n")
    assert cpu_model(info) == "AMD EPYC (AVX2)"
    info.write_text("model name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: avx2 avx512f avx512bw\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Platinum (AVX-512)"
    info.write_text("model name\t: Old\nflags\t\t: sse2\n")
    assert cpu_model(info) == "Old"
    assert cpu_model(tmp_path / "absent")  # another system: the platform's word
