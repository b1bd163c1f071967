"""Regenerate the figures in benchmarks/results/README.md from the result files beside it.

Why: results are written only by the scripts that measured them, and a README that copies their figures by hand
drifts from them (a rounded rate quoted from memory, a frame count nobody measured, a row for a run no file holds).
So the README's prose is kept by hand and carries no figures; every figure sits in a block between two markers and
is regenerated here from the files the opening marker names (a file name or a glob):

    <!-- generated from lipsync-*.json by scripts/results_readme.py: do not edit -->
    ...
    <!-- end of generated -->

Every file in benchmarks/results/ must be named by some block, so a new result cannot go unlisted.
tests/test_results_readme.py checks that the README is what this script writes.

Usage (from the repository root): python scripts/results_readme.py [--check]
  --check  write nothing; exit 1 and show the difference when the README is not what the files say
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
README_NAME = "README.md"
BEGIN = re.compile(r"<!-- generated from (\S+) by scripts/results_readme\.py: do not edit -->\n")
END = "<!-- end of generated -->"
NONE = "—"
# A measured figure in prose: a number with a unit ("51.9 fps", "7.15x", "250 frames", "0.4 ms", "1%"). Names with
# digits (H100, fp16, 512x512, libx264, Python 3.11) and numbers in `code` (commands, file names) are not figures.
FIGURE = re.compile(
    r"(?<![\w.])\d[\d,]*(?:\.\d+)?\s?(?:%|×|x\b|ms\b|s\b|seconds?\b|minutes?\b|fps\b|frames?/s|samples?/s|jobs?/s"
    r"|frames\b|samples\b|GiB\b|MiB\b|GB\b|MB\b|J\b|W\b|Hz\b|[GT]FLOP|[GT]MAC|grey levels\b|times\b)"
)
NOT_PROSE = re.compile(r"`[^`]*`|<!--.*?-->", re.DOTALL)


class ReadmeError(ValueError):
    """The README's markers or the result files do not fit together."""


# ------------------------------------------------------------------------------------------------------ formatting


def number(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def seconds(value: float | None) -> str:
    return NONE if value is None else f"{value:,.2f} s"


def millis(value: float | None) -> str:
    """Milliseconds, with a third decimal below one (a small model's call)."""
    if value is None:
        return NONE
    return f"{value:.3f} ms" if abs(value) < 1 else f"{value:,.2f} ms"


def signed_percent(fraction: float) -> str:
    return f"{100 * fraction:+.2f}%"


def rate_text(per_second: float) -> str:
    """A rate to three or more significant figures."""
    return number(per_second, 0 if per_second >= 100 else 1)


def yes_no(flag: bool | None) -> str:
    return NONE if flag is None else ("yes" if flag else "no")


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str) -> str:
    return f"`{text}`"


def sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def context(record: dict[str, Any], path: Path) -> str:
    """What every result says about itself: the file, the command it was run with, and the runner's words."""
    command = code(record["command"]) if record.get("command") else "not recorded in the file"
    parts = [f"File {code(path.name)}; command: {command}."]
    parts += [sentence(f"{key.capitalize()}: {record[key]}") for key in ("label", "note") if record.get(key)]
    return " ".join(parts)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------------- renderers


def render_telemetry(paths: list[Path]) -> str:
    rows, calls = [], []
    for path in paths:
        r = load(path)
        m, sample, situ = r["machine"], r["per_sample"], r["in_situ"]
        machine = f"{m['gpus'][0]}, driver {m['driver']}" if m["gpus"] else "no GPU seen by NVML"
        rows.append([
            r["date"], f"{machine}, {m['cores']} cores", r.get("label") or NONE,
            f"{millis(sample['cpu_ms_median'])} ({millis(sample['wall_ms_median'])} wall)",
            f"{sample['percent_of_one_core_at_interval']:.2f}% at {situ['interval_s']:g} s",
            f"{situ['percent_of_one_core']:.2f}% over {situ['seconds']:g} s",
            f"under {r['target_percent_of_one_core']:g}%", yes_no(r["passes_target"]), code(path.name),
        ])  # fmt: skip
        if r["per_call_cpu_ms"]:
            costs = ", ".join(f"{name} {millis(value)}" for name, value in r["per_call_cpu_ms"].items())
            calls.append(f"- {code(path.name)} ({m['gpus'][0]}), CPU per call, dearest first: {costs}")
    headers = ["date", "machine", "label", "per sample (CPU median)", "share of one core", "in situ", "target",
               "within", "file"]  # fmt: skip
    return table(headers, rows) + ("\n\n" + "\n".join(calls) if calls else "")


def _lipsync_case(row: dict[str, Any]) -> list[Any]:
    slowest = row["slowest_stage"]
    return [
        row["case"], row["frames"], seconds(row["wall_s"]), number(row["frames_per_s"], 1), row["batch_size"],
        row["precision"], row["encoder"], f"{slowest} ({seconds(row['stages_s'][slowest])})",
    ]  # fmt: skip


def _network_pivot(network: list[dict[str, Any]]) -> str:
    """Samples/s with precision and variant down, batch across: the sweep as one table."""
    batches = sorted({r["batch"] for r in network})
    kinds = list(dict.fromkeys((r["precision"], r["variant"]) for r in network))
    found = {(r["precision"], r["variant"], r["batch"]): r for r in network}

    def rate(kind: tuple[str, str], batch: int) -> str:
        row = found.get((*kind, batch))
        if row is None:
            return NONE
        return "out of memory" if row.get("oom") else rate_text(row["samples_per_s"])

    headers = ["precision", "variant", *(f"batch {b}" for b in batches)]
    return table(headers, ([*kind, *(rate(kind, b) for b in batches)] for kind in kinds))


def _span(stats: dict[str, Any], unit: str, scale: float = 1.0) -> str:
    """A side-by-side figure: the median, and the extremes over the rounds ('12.30 s (11.90 … 12.80)')."""
    low, mid, high = (number(stats[k] / scale) for k in ("min", "median", "max"))
    return f"{mid}{unit} ({low} … {high})"


SIDE_BY_SIDE_TIMES = {"per_frame_s": "per frame", "wall_s": "whole process"}


def _side_by_side_rows(comparison: dict[str, Any], time_keys: Sequence[str], lead: Sequence[Any] = ()) -> list[list]:
    """One row per side: its medians (extremes), then its per-round ratios against upstream (time: upstream / side,
    above 1 the side is faster; peak RSS: side / upstream, below 1 the side is smaller)."""
    rows = []
    for name, side in comparison["sides"].items():
        summary, ratios = side["summary"], comparison["ratios"].get(name, {})
        batch = side["runs"][0].get("batch_size")
        rows.append([
            *lead, name, batch if batch is not None else NONE, len(side["runs"]),
            *(_span(summary[k], " s") if k in summary else NONE for k in time_keys),
            _span(summary["peak_rss_bytes"], " GiB", 2**30),
            *(_span(ratios[k], "x") if k in ratios else NONE for k in (*time_keys, "peak_rss_bytes")),
        ])  # fmt: skip
    return rows


def _side_by_side_headers(time_keys: Sequence[str], lead: Sequence[str] = ()) -> list[str]:
    times = [SIDE_BY_SIDE_TIMES[k] for k in time_keys]
    return [*lead, "side", "batch", "runs", *times, "peak RSS", *(f"upstream / side, {t}" for t in times),
            "side / upstream, peak RSS"]  # fmt: skip


def _lipsync_side_by_side(record: dict[str, Any]) -> str:
    sbs = record["side_by_side"]
    rows, notes = [], []
    for case in sbs["cases"]:
        if "error" in case:
            notes.append(f"{case['case']}: upstream or ours failed: {case['error'].splitlines()[-1]}")
            continue
        rows += _side_by_side_rows(case, ("wall_s",), lead=[f"{case['case']} ({case['inputs']})"])
        muxed = {r.get("muxed_with_ffmpeg") for r in case["sides"]["upstream"]["runs"]}
        mux = "ran" if muxed == {True} else "did not run (no ffmpeg: its time is if anything short)"
        notes.append(f"{case['case']}: fixed box {case['box']}; upstream's final ffmpeg mux {mux}.")
    text = (
        f"Side by side with {sbs['upstream']}: {sbs['pairs']} rounds of {' then '.join(sbs['round_order'])}, each a "
        f"separate process, {sbs['precision']} on the {sbs['device']} ({sbs['torch_threads']} threads); medians, "
        "extremes in brackets:"
    )
    table_text = table(_side_by_side_headers(("wall_s",), lead=["case"]), rows) if rows else ""
    notes = [*sbs.get("notes", []), *notes]
    return "\n\n".join(part for part in (text, table_text, "\n".join(f"- {note}" for note in notes)) if part)


def render_lipsync(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        r = load(path)
        m, inputs = r["machine"], r["inputs"]
        cpu = f", {m['cpu']}" if m.get("cpu") not in (None, m["name"], "x86_64", "aarch64") else ""  # older: no model
        parts.append(f"#### {m['name']} ({m['device']}, {m['cores']} cores{cpu}), {r['date']}")
        parts.append(
            f"{context(r, path)}\nPyTorch {m['torch']}; {r['weights']}; inputs: video {inputs['video']}, "
            f"image {inputs['image']}."
        )
        rows = [_lipsync_case(row) for row in r["end_to_end"]]
        if not rows and not r.get("upstream"):  # a side-by-side-only run
            parts.append(_lipsync_side_by_side(r))
            continue
        upstream, comparison = r.get("upstream"), ""
        if upstream:
            rows.append(_lipsync_case(upstream["ours"]))
            if "upstream" in upstream:
                theirs = upstream["upstream"]
                rows.append([
                    "upstream inference.py --box, same clip", NONE, seconds(theirs["wall_s"]), NONE, NONE, NONE,
                    NONE, f"ours {upstream['speedup']:.2f}x faster end to end",
                ])  # fmt: skip
                mux = "ran" if theirs["muxed_with_ffmpeg"] else "did not run (so its time is if anything short)"
                comparison = f"\n\nUpstream's final ffmpeg mux {mux}; the fixed box was {upstream['box']}."
            else:
                comparison = f"\n\nUpstream's inference.py failed: {upstream['error'].splitlines()[-1]}"
        headers = ["case", "frames", "wall", "frames/s", "batch", "precision", "encoder", "slowest stage"]
        parts.append(table(headers, rows) + comparison)
        if r.get("side_by_side"):
            parts.append(_lipsync_side_by_side(r))
        if r["network"]:
            parts.append("The generator alone, samples/s (median of the timed forwards after warm-up):")
            parts.append(_network_pivot(r["network"]))
        if r.get("targets"):
            parts.append("Speed targets, measured side by side in this run:")
            parts.append(table(
                ["target", "batch", "ratio", "floor", "met"],
                ([t["name"], t["batch"], f"{t['ratio']:.2f}x", f"{t['floor']:g}x", yes_no(t["met"])]
                 for t in r["targets"]),
            ))  # fmt: skip
    return "\n\n".join(parts)


def render_onnx_overhead(paths: list[Path]) -> str:
    rows = []
    for path in paths:
        r = load(path)
        m = r["machine"]
        machine = f"{', '.join(m['gpus']) or 'no GPU'}, {m['cpu_count']} cores, onnxruntime {m['onnxruntime']}"
        target = f"under {100 * r['target_overhead']:g}%" if "target_overhead" in r else NONE
        for row in r["results"]:
            low, high = row["overhead_spread"]
            rows.append([
                r["date"], machine, row["provider"], row["model"], row["batch"], row["runs"], len(row["rounds"]),
                millis(row["bare_p50_ms_median"]), millis(row["ours_p50_ms_median"]),
                signed_percent(row["overhead_median"]), f"{signed_percent(low)} … {signed_percent(high)}", target,
                yes_no(row["within_target"]),
                code(path.name),
            ])  # fmt: skip
    headers = ["date", "machine", "provider", "model", "batch", "runs", "rounds", "bare p50", "ours p50",
               "overhead (median)", "per-round range", "target", "within", "file"]  # fmt: skip
    commands = "\n".join(f"- {context(load(p), p)}" for p in paths)
    return table(headers, rows) + "\n\n" + commands


def _bench_count(config: dict[str, Any], rows: list[dict[str, Any]], key: str) -> str:
    """A sweep's run or warm-up count; left empty, each row's own (the GPU defaults, a time budget on the CPU)."""
    if config[key] is not None:
        return str(config[key])
    return "/".join(sorted({str(row[key]) for row in rows if row.get(key) is not None})) or NONE


def render_bench(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        r = load(path)
        m, config = r["machine"], r["config"]
        gpu = (m["gpu"] or {}).get("name")
        runs, warmup = (_bench_count(config, r["results"], key) for key in ("runs", "warmup"))
        parts.append(
            f"{context(r, path)}\nPreset {config.get('preset') or NONE}, {runs} timed runs after "
            f"{warmup} warm-up; {gpu or 'no GPU'}, {m['cpu_count']} cores, PyTorch {m['torch']}, "
            f"onnxruntime {m['onnxruntime']}; {r['model']['title']}: "
            f"{number(r['model']['flops_per_sample'] / 1e9)} GFLOP per sample."
        )
        rows = []
        for i, row in enumerate(r["results"]):
            lat = row["latency"]
            rows.append([
                row["label"] + (" (baseline)" if i == config["baseline"] else ""), row["status"],
                millis(lat["p50_ms"]) if lat else NONE,
                f"{number(lat['mean_ms'], 0)} ± {number(lat['std_ms'], 0)} ms" if lat else NONE,
                number(row["samples_per_s"], 1) if row["samples_per_s"] else NONE,
                f"{row['speedup']:.2f}" if row["speedup"] is not None else NONE, seconds(row["first_run_s"]),
            ])  # fmt: skip
        parts.append(table(["configuration", "status", "p50", "mean ± std", "samples/s", "× baseline", "first run"],
                           rows))  # fmt: skip
        parts.append("Notes in the file:\n" + "\n".join(f"- {note}" for note in r["notes"]))
    return "\n\n".join(parts)


MODULES = ("appearance", "motion", "warping", "decoder")


def _portrait_runs(e2e: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(first run, re-run) in the current layout; files written before it kept one run's figures and the re-run's
    wall time, and that one run of the baseline was its second (the script discarded a warm-up run)."""
    if "first_run" in e2e:
        return e2e["first_run"], e2e["rerun"]
    run = {"wall_s": e2e["wall_s"], "frames_per_second": e2e["frames_per_second"]}
    if e2e["engine"] == "baseline":
        return None, run
    return run, {"wall_s": e2e["rerun_wall_s"], "frames_per_second": None}


def _portrait_run(run: dict[str, Any] | None) -> str:
    if run is None:
        return "not recorded"
    rate = run.get("frames_per_second")
    return seconds(run["wall_s"]) + (f" ({number(rate)} frames/s)" if rate is not None else "")


def _frames(e2e: dict[str, Any]) -> int:
    return e2e["first_run"]["frames"] if "first_run" in e2e else e2e["frames"]


def render_portrait(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        r = load(path)
        parts.append(
            f"{context(r, path)}\nDevice {r['device']} ({r['gpu'] or 'no GPU'}"
            + (f"; CPU {r['cpu']}" if r.get("cpu") else "")
            + f"), PyTorch {r['torch']}"
            + (f"; {r['weights']}." if r.get("weights") else ".")
        )
        rows = []
        for row in r["results"]:
            mods, e2e = row["modules"], row["end_to_end"]
            first, again = _portrait_runs(e2e)
            backend = row["backend"] + (" (compiled)" if row.get("compiled") else "")
            rows.append([
                backend, row["precision"], *(millis(mods[f"{name}_ms"]) for name in MODULES),
                millis(mods["warping_ms"] + mods["decoder_ms"]), _frames(e2e), _portrait_run(first),
                _portrait_run(again),
            ])  # fmt: skip
        baseline = r.get("baseline")
        if baseline is None:  # a side-by-side-only run
            parts.append(_portrait_side_by_side(r["side_by_side"]))
            continue
        first, again = _portrait_runs(baseline)
        rows.append(["baseline engine (no weights)", NONE, *(NONE for _ in MODULES), NONE, _frames(baseline),
                     _portrait_run(first), _portrait_run(again)])  # fmt: skip
        headers = ["backend", "precision", *MODULES, "per frame (warping + decoder)", "frames", "first run",
                   "re-run"]  # fmt: skip
        parts.append(table(headers, rows))
        if r.get("side_by_side"):
            parts.append(_portrait_side_by_side(r["side_by_side"]))
    return "\n\n".join(parts)


def _portrait_side_by_side(sbs: dict[str, Any]) -> str:
    text = (
        f"Side by side with {sbs['upstream']}: {sbs['frames']} driving frames, {sbs['pairs']} rounds of "
        f"{', then '.join(sbs['round_order'])}, each a separate process, {sbs['precision']} on the {sbs['device']} "
        f"({sbs['torch_threads']} threads); medians, extremes in brackets:"
    )
    if "error" in sbs:
        return f"{text} failed: {sbs['error'].splitlines()[-1]}"
    keys = ("per_frame_s", "wall_s")
    notes = "\n".join(f"- {note}" for note in sbs["notes"])
    return f"{text}\n\n{table(_side_by_side_headers(keys), _side_by_side_rows(sbs, keys))}\n\n{notes}"


def render_broker(paths: list[Path]) -> str:
    rows = []
    for path in paths:
        r = load(path)
        latency, lipsync, throughput = r["latency"], r["lipsync"], r["throughput"]
        target = f"at most {latency['target_added_ms']:g} ms" if "target_added_ms" in latency else NONE
        rows.append([
            r["date"], f"{r['machine']['cpu_count']} cores", r.get("label") or NONE,
            millis(latency["added_ms_median"]), target, yes_no(latency["within_target"]),
            seconds(lipsync["through_broker_s"]["median"]), seconds(lipsync["in_process_s"]["median"]),
            millis(lipsync["added_ms_median"]),
            f"{number(throughput['jobs_per_s'], 0)} jobs/s ({throughput['jobs']} jobs)", code(path.name),
        ])  # fmt: skip
    headers = ["date", "machine", "label", "added to submit-to-first-work (median)", "target", "within",
               "lip-sync through the broker (median)", "in process (median)", "added", "throughput",
               "file"]  # fmt: skip
    return table(headers, rows) + "\n\n" + "\n".join(f"- {context(load(p), p)}" for p in paths)


def render_wav2lip_levers(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        r = load(path)
        m = r["machine"]
        parts.append(f"#### {m['cpu']} ({m['cores']} cores), {r['date']}")
        parts.append(
            f"{context(r, path)}\nPyTorch {m['torch']}; {r['weights']}; {r['precision']}, {r['torch_threads']} "
            f"threads, batch {r['batch']}, {r['rounds']} interleaved rounds per lever; glibc keeps freed memory: "
            f"{yes_no(r['memory_kept'])}; face box {r['face_box']}."
        )
        rows = [[
            row["lever"], row["inputs"], f"from row {row['first_row']}" if row["first_row"] else "all",
            _span(row["sides"]["with"], " ms", 1e-3), _span(row["sides"]["without"], " ms", 1e-3),
            _span(row["without_over_with"], "x"), number(row["max_grey_levels"], 4),
        ] for row in r["levers"]]  # fmt: skip
        headers = ["lever", "inputs", "rows compared", "per frame, with", "per frame, without",
                   "without / with (per round)", "largest difference, grey levels"]  # fmt: skip
        parts.append(table(headers, rows))
    return "\n\n".join(parts)


def render_scaling(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        r = load(path)
        machine = r["machine"]
        where = machine.get("gpu") or f"no GPU, {machine['cpu_count']} cores"
        rows = [[row["workers_per_device"], ", ".join(row["devices"]), row["jobs"], seconds(row["wall_s"]),
                 number(row["jobs_per_hour"], 0), number(row["frames_per_s"], 1), f"{number(row['speedup'])}x"]
                for row in r["workers"]]  # fmt: skip
        headers = ["workers per device", "devices", "jobs", "wall", "jobs/hour", "frames/s", "vs the first"]
        parts.append(f"{context(r, path)} Engine: {r['engine']}; {where}.\n\n{table(headers, rows)}")
        split = r.get("split")
        if split:
            kind = "logical GPUs mapped to the CPU" if split["logical_gpus_on_cpu"] else "GPUs"
            target = NONE if split["target"] is None else f"{split['target']:g}x ({yes_no(split['within_target'])})"
            parts.append(
                f"A {split['speech_s']:g} s lip-sync split over {len(split['devices'])} {kind} "
                f"({', '.join(split['devices'])}): {_span(split['split_s'], ' s')} split against "
                f"{_span(split['unsplit_s'], ' s')} unsplit, {number(split['speedup'])}x; target on 2 GPUs: {target}."
            )
    return "\n\n".join(parts)


def render_log(paths: list[Path]) -> str:
    """A captured console log, quoted by its last line that says something (a summary: passed, ok, warnings)."""
    rows = []
    for path in paths:
        lines = [line.strip(" |=") for line in path.read_text().splitlines()]
        summary = next((line for line in reversed(lines) if re.search(r"\d", line) and line.strip("+-= ")), NONE)
        rows.append([code(path.name), code(" ".join(summary.split()))])
    return table(["file", "last line"], rows)


def render_musetalk(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        r = load(path)
        parts.append(f"{context(r, path)}\nDevice {r['device']} ({r['gpu'] or 'no GPU'}), PyTorch {r['torch']}.")
        for run in r["pipeline"]:
            if "error" in run:
                parts.append(f"Pipeline with runtime {run['runtime']}, {run['precision']}: not run ({run['error']}).")
                continue
            stages = ", ".join(f"{name} {seconds(t)}" for name, t in run["stages_s"].items())
            runtime = f", runtime {run['runtime']} (ran on {run['ran_on']})" if "runtime" in run else ""
            parts.append(
                f"Pipeline with {run['networks']}, {run['precision']}{runtime}, batch {run['batch']}: an avatar of "
                f"{run['avatar_frames']} frames prepared in {seconds(run['prepare_s'])}, then {run['frames']} frames "
                f"for {run['speech_s']:g} s of speech in {seconds(run['end_to_end_s'])} "
                f"({number(run['frames_per_s'], 1)} frames/s; the first after {seconds(run['first_frame_s'])}). "
                f"Stages: {stages}."
            )
        rows = [[row["network"], row["precision"], row["batch"], number(row["gflop_per_frame"], 1),
                 millis(row["ms_per_frame"]), number(row["frames_per_s"], 2), number(row["tflops"], 3)]
                for row in r["networks"]]  # fmt: skip
        parts.append(table(["network", "precision", "batch", "GFLOP/frame", "per frame", "frames/s", "TFLOP/s"], rows))
    return "\n\n".join(parts)


RENDERERS: dict[str, Callable[[list[Path]], str]] = {
    "telemetry_overhead": render_telemetry,
    "lipsync": render_lipsync,
    "onnx_overhead": render_onnx_overhead,
    "bench": render_bench,
    "portrait": render_portrait,
    "musetalk": render_musetalk,
    "broker": render_broker,
    "scaling": render_scaling,
    "wav2lip_levers": render_wav2lip_levers,
    "log": render_log,
}


def kind_of(path: Path) -> str:
    """The script that wrote a file, by its name: '<benchmark>-<where>-<date>.json'; any .txt is a console log."""
    if path.suffix == ".txt":
        return "log"
    kind = path.name.split("-", 1)[0]
    if kind not in RENDERERS:
        raise ReadmeError(f"{path.name}: no renderer for {kind!r} results (known: {', '.join(RENDERERS)})")
    return kind


# ------------------------------------------------------------------------------------------------------- the README


def result_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".json", ".txt"))


def blocks(text: str) -> list[tuple[int, int, str]]:
    """(start of the generated text, its end, the pattern) for each marked block."""
    found = []
    for match in BEGIN.finditer(text):
        end = text.find(END, match.end())
        if end < 0:
            raise ReadmeError(f"the block for {match.group(1)} has no {END!r}")
        found.append((match.end(), end, match.group(1)))
    return found


def render_block(pattern: str, folder: Path) -> str:
    paths = [p for p in result_files(folder) if fnmatch.fnmatch(p.name, pattern)]
    if not paths:
        raise ReadmeError(f"no result file matches {pattern!r}")
    kinds = {kind_of(p) for p in paths}
    if len(kinds) > 1:
        raise ReadmeError(f"{pattern!r} names results of several scripts ({', '.join(sorted(kinds))})")
    return RENDERERS[kinds.pop()](paths) + "\n"


def quoted_figures(text: str) -> list[str]:
    """The figures a piece of prose quotes (code spans and HTML comments left aside)."""
    return [match.group(0) for match in FIGURE.finditer(NOT_PROSE.sub("", text))]


def regenerate(text: str, folder: Path) -> str:
    """The README with every block rewritten from the files; an error if some result file is in no block, or if the
    hand-kept prose quotes a figure (it belongs in a result file, and from there in a block)."""
    figures = quoted_figures(prose(text))
    if figures:
        raise ReadmeError(f"the prose quotes figures no result file backs: {', '.join(figures)}")
    found = blocks(text)
    named = {p.name for p in result_files(folder) for *_, pattern in found if fnmatch.fnmatch(p.name, pattern)}
    unlisted = sorted({p.name for p in result_files(folder)} - named)
    if unlisted:
        raise ReadmeError(f"in no block of the README: {', '.join(unlisted)} (add a marker where each belongs)")
    out, last = [], 0
    for start, end, pattern in found:
        out += [text[last:start], render_block(pattern, folder)]
        last = end
    return "".join(out) + text[last:]


def prose(text: str) -> str:
    """The hand-kept text: everything outside the generated blocks."""
    out, last = [], 0
    for start, end, _ in blocks(text):
        out.append(text[last:start])
        last = end
    return "".join(out) + text[last:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs from the files")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of results and its README")
    args = parser.parse_args(argv)
    readme = args.results / README_NAME
    text = readme.read_text()
    try:
        fresh = regenerate(text, args.results)
    except ReadmeError as exc:
        print(f"{readme}: {exc}", file=sys.stderr)
        return 2
    if fresh == text:
        print(f"{readme}: up to date")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), "README", "files"))
        return 1
    readme.write_text(fresh)
    print(f"{readme}: regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
