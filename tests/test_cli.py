import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


CONSOLE_SCRIPT = "import sys, app; sys.exit(app.main(sys.argv[1:]))"  # what pyproject's `avatarbench` runs


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
        check=False,
    )


def test_doctor_json(tmp_path: Path) -> None:
    proc = run("doctor", "--json", AVATARBENCH_DATA_DIR=str(tmp_path))
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert {c["name"] for c in report["checks"]} >= {"pytorch", "onnxruntime-cuda", "video-encoders"}
    assert proc.returncode == (1 if report["status"] == "problem" else 0)


def test_doctor_text(tmp_path: Path) -> None:
    proc = run("doctor", AVATARBENCH_DATA_DIR=str(tmp_path))
    assert "[ ok ] python:" in proc.stdout and "problem(s) in" in proc.stdout


def test_telemetry_table_and_json_watch() -> None:
    table = run("telemetry")
    assert table.returncode == 0 and "avatarbench telemetry" in table.stdout and "Host: CPU" in table.stdout
    watch = run("telemetry", "--watch", "--json", "--interval", "0.2", "--count", "3")
    lines = [json.loads(line) for line in watch.stdout.splitlines()]
    assert len(lines) == 3 and lines[0]["timestamp"] < lines[2]["timestamp"]
    counted = run("telemetry", "--json", "--interval", "0.2", "--count", "2")  # without --watch: it was one sample
    assert len(counted.stdout.splitlines()) == 2
    paced = run("telemetry", "--watch", "--json", "--count", "2", AVATARBENCH_TELEMETRY_INTERVAL="1.5")  # the setting
    first, second = (json.loads(line)["timestamp"] for line in paced.stdout.splitlines())
    assert second - first >= 1.5  # it was 1 s whatever the setting said (the sleep is at least the interval)


def test_count_zero_alone_watches_until_ctrl_c(monkeypatch, capsys) -> None:
    """-h says --count given alone watches, 0 never stopping: `telemetry --count 0` took one sample and ended."""
    import time

    from engine.cli import main

    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the fourth wait is Ctrl-C
        slept.append(seconds)
        if len(slept) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    assert main(["telemetry", "--json", "--count", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3 and len(slept) == 4


def test_bad_input_is_a_clear_error() -> None:
    assert run("telemetry", "--interval", "0").returncode == 2
    from engine.cli import main

    for flags in (["--interval", "inf"], ["--interval", "nan"], ["--interval", "1e308"], ["--count", "-1"]):
        assert main(["telemetry", "--watch", *flags]) == 2, flags  # they crashed: deque(maxlen=NaN), sleep(1e308)
    proc = run("doctor", AVATARBENCH_MAX_UPLOAD_MB="many")  # the doctor reports it, with its other checks
    assert proc.returncode == 1 and "[FAIL] settings: AVATARBENCH_MAX_UPLOAD_MB='many'" in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--model", "wav2lip", "--json", "-"],
        ["bench", "--model", "wav2lip", "--csv", "-"],
        ["lipsync", "--face", "f.png", "--audio", "a.wav", "--out", "o.mp4", "--json", "-"],
        ["lipsync", "--face", "f.png", "--audio", "a.wav", "--out", "-"],
    ],
)
def test_a_dash_for_an_output_file_is_refused_before_the_work(args, tmp_path: Path, monkeypatch, capsys) -> None:
    """It wrote a file named "-" after the work (standard output carries the tables, so it cannot be the report)."""
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert "'-' is not standard output here" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "cpu-vs-gpu", "--precision", "fp32"], "preset cpu-vs-gpu sets its own configurations; "
         "--precision would be ignored"),
        (["--points", '[{"runtime": "eager"}]', "--runtime", "eager", "--device", "cpu"], "points set every "
         "configuration; --runtime would be ignored"),
    ],
)  # fmt: skip
def test_bench_refuses_a_typed_flag_that_a_preset_or_points_would_ignore(args, message, capsys) -> None:
    """Typed at its default value it was ignored without a word (the form, which sends every field, cannot tell)."""
    from engine.cli import main

    assert main(["bench", "--model", "wav2lip", *args]) == 2
    assert message in capsys.readouterr().err


def test_top_k_is_shown_once_for_a_single_class_model() -> None:
    """With one class top-5 is top-1: the line read "top-1 100.0%, top-1 100.0%"."""
    from engine.onnx.cli import _accuracy_lines

    one = {"topk": {"cpu": {"top1": 1.0, "top5": 1.0, "top5_k": 1, "n": 4, "output": "p"}}}
    assert _accuracy_lines(one) == ["labels cpu (p): top-1 100.0% of 4"]
    many = {"topk": {"cpu": {"top1": 0.5, "top5": 0.75, "top5_k": 5, "n": 4, "output": "p"}}}
    assert _accuracy_lines(many) == ["labels cpu (p): top-1 50.0%, top-5 75.0% of 4"]


def test_serve_rejects_a_bad_login_spec() -> None:
    pytest.importorskip("gradio")
    proc = run("serve", "--auth", "nopassword")
    assert proc.returncode == 2 and "USER:PASS" in proc.stderr


def test_serve_refuses_logins_and_operators_that_could_never_work() -> None:
    """A user given twice (the second password silently won), a user with spaces around it (the login form strips
    them), an operator who is no login; and a bare IPv6 host, which Gradio cannot put in its URL, is bracketed."""
    import app
    from engine.core.errors import InputError

    for specs, words in ((["a:1", "a:2"], "a is given twice"), ([" bob :pw"], "starts or ends with a space")):
        with pytest.raises(InputError, match=words):
            app._logins(specs)
    logins = app._logins(["alice:1", "carol:2"])
    assert app._operators(["carol", "*"], logins) == {"carol", "*"} and app._operators(None, None) == frozenset()
    with pytest.raises(InputError, match=r"'dave' is not a login: the --auth users are alice, carol"):
        app._operators(["dave"], logins)
    with pytest.raises(InputError, match="there is no --auth"):
        app._operators(["dave"], None)
    assert [app._server_name(h) for h in ("::1", "[::1]", "0.0.0.0", "::")] == ["[::1]", "[::1]", "0.0.0.0", "[::]"]
    pytest.importorskip("gradio")
    proc = run("serve", "--operator", "carol", "--port", "1")
    assert proc.returncode == 2 and "--operator 'carol' is not a login" in proc.stderr


def test_serve_shows_the_app_flags() -> None:
    pytest.importorskip("gradio")
    proc = run("serve", "--help")
    assert proc.returncode == 0
    for flag in ("--host", "--port", "--share", "--device", "--auth"):
        assert flag in proc.stdout


def test_onnx_inspect(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8, 30, 30])
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["out"])], "g", [x], [y], [w])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    env = {"AVATARBENCH_DATA_DIR": str(tmp_path / "data")}
    text = run("onnx", "inspect", str(path), "--symbols", "batch=4", **env)
    assert text.returncode == 0, text.stderr
    assert "input  image: float32 ['batch', 3, 32, 32]" in text.stdout and "Conv x1" in text.stdout
    assert "  1.555 MFLOP per run; not counted: nothing\n" in text.stdout  # it read 0.002 GFLOP
    assert "  batch  batch: free" in text.stdout and "dynamic batch" not in text.stderr + text.stdout  # no warning
    info = json.loads(run("onnx", "inspect", str(path), "--json", **env).stdout)
    assert info["flops"] == 2 * 8 * 30 * 30 * 3 * 9 and info["parameters"] == 216
    bad = run("onnx", "inspect", str(tmp_path / "data"), **env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert run("onnx", "inspect", str(path), "--symbols", "batch", **env).returncode == 2
    example = run("onnx", "inspect", "--example", "wav2lip", **env)
    assert example.returncode == 0 and "input  mel: float32" in example.stdout
    neither = run("onnx", "inspect", **env)
    assert neither.returncode == 2 and "give either a model" in neither.stderr


def _matmul(path: Path) -> Path:
    """y[N, 4] = x[N, 16] @ ones: a model whose batch the commands may set."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w = numpy_helper.from_array(np.ones((16, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_onnx_eval(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = _matmul(tmp_path / "mm.onnx")
    report_path = tmp_path / "report.json"
    env = {"AVATARBENCH_DATA_DIR": str(tmp_path / "data")}
    args = ["--batch-sizes", "1,4", "--runs", "5", "--json", str(report_path), "--quiet"]
    proc = run("onnx", "eval", str(path), *args, **env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert [r["batch"] for r in report["results"]] == [1, 4]
    assert "cpu   batch 4" in proc.stdout
    assert "parity: only the CPU ran" in proc.stdout and "parity cpu" not in proc.stdout  # not against itself
    assert run("onnx", "eval", str(path), "--providers", "tpu", **env).returncode == 2
    # NaN expected where the model gives numbers: unbounded, as parity has it; the JSON stays JSON (inf as a
    # string, not Python's bare token)
    np.savez(tmp_path / "nan.npz", y=np.full((1, 4), np.nan, np.float32))
    args = ["--runs", "2", "--expected", str(tmp_path / "nan.npz"), "--json", str(report_path), "--quiet"]
    proc = run("onnx", "eval", str(path), *args, **env)
    assert proc.returncode == 0 and "expected cpu y: mae inf" in proc.stdout, proc.stderr
    assert json.loads(report_path.read_text())["accuracy"]["expected"]["cpu"]["y"]["mae"] == "Infinity"
    # expected values of another shape: the report is written, and the command says no (it exited 0)
    np.savez(tmp_path / "wide.npz", y=np.zeros((1, 5), np.float32))
    args[3] = str(tmp_path / "wide.npz")
    proc = run("onnx", "eval", str(path), *args, **env)
    assert proc.returncode == 2 and "the accuracy asked for was not measured: cpu y: shape mismatch" in proc.stderr
    assert json.loads(report_path.read_text())["accuracy"]["expected"]["cpu"]["y"]["error"].startswith("shape")

    # a model that runs on no provider (Gather past the end of its data) fails the command, with the reason
    data = helper.make_tensor_value_info("d", TensorProto.FLOAT, [4])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])
    index = numpy_helper.from_array(np.array([10], np.int64), "i")
    gather = helper.make_graph([helper.make_node("Gather", ["d", "i"], ["o"])], "g", [data], [out], [index])
    broken = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(gather, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(broken))
    proc = run("onnx", "eval", str(broken), "--runs", "2", "--quiet", **env)
    assert proc.returncode == 1 and "the model ran on no provider" in proc.stderr, proc.stderr
    assert "failed:" in proc.stdout and str(tmp_path / "data") not in proc.stdout + proc.stderr


def test_an_interrupted_bench_writes_the_configurations_it_finished(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C (or SIGTERM) in the middle of a long sweep threw away every row it had measured."""
    import engine.bench.sweep as sweep
    from engine.cli import EXIT_INTERRUPTED, main

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    real = sweep._measure

    def interrupted_at_the_third(ctx, point, row, say) -> None:
        if point.batch == 4:
            raise KeyboardInterrupt
        real(ctx, point, row, say)

    monkeypatch.setattr(sweep, "_measure", interrupted_at_the_third)
    report, table = tmp_path / "report.json", tmp_path / "rows.csv"
    args = ["bench", "--model", str(_matmul(tmp_path / "mm.onnx")), "--runtime", "ort-cpu", "--batch", "1,2,4",
            "--runs", "2", "--quiet", "--json", str(report), "--csv", str(table)]  # fmt: skip
    assert main(args) == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "avatarbench: interrupted" in err and "2 of 3 configurations measured" in out
    written = json.loads(report.read_text())
    assert [r["batch"] for r in written["results"]] == [1, 2] and written["command"].startswith("avatarbench")
    assert len(table.read_text().splitlines()) == 3  # the header and the two rows


def test_an_interrupted_onnx_eval_writes_the_providers_it_finished(tmp_path: Path, monkeypatch, capsys) -> None:
    from engine.cli import EXIT_INTERRUPTED, main
    from engine.onnx.runner import Runner

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    real = Runner.run_provider

    def interrupted_at_cuda(runner, key: str, reference_only: bool) -> None:
        if key == "cuda":
            raise KeyboardInterrupt
        real(runner, key, reference_only)

    monkeypatch.setattr(Runner, "run_provider", interrupted_at_cuda)
    report = tmp_path / "report.json"
    args = ["onnx", "eval", str(_matmul(tmp_path / "mm.onnx")), "--providers", "cpu,cuda", "--batch-sizes", "1,2",
            "--runs", "2", "--quiet", "--json", str(report)]  # fmt: skip
    assert main(args) == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "avatarbench: interrupted" in err and "note: the evaluation stopped before its end: cpu of cpu, cuda" in out
    assert [(r["provider"], r["batch"]) for r in json.loads(report.read_text())["results"]] == [("cpu", 1), ("cpu", 2)]


def test_a_failed_run_leaves_its_error_in_json_never_an_earlier_result(tmp_path: Path, capsys) -> None:
    """A run that failed left the last run's --json in place: a script reading it took that result for this one.
    The file now holds the error and exit status; a file the failed run wrote itself (a report, then exit 3 for a
    provider that fell back) is kept, and a bug's record comes with its traceback."""
    from engine.cli import EXIT_INPUT, EXIT_SETUP, main
    from engine.core.commands import Command, write_json
    from engine.core.errors import SetupError

    report = tmp_path / "report.json"
    report.write_text('{"results": ["an earlier run"]}')
    assert main(["onnx", "eval", str(tmp_path / "missing.onnx"), "--quiet", "--json", str(report)]) == EXIT_INPUT
    error = capsys.readouterr().err.removeprefix("avatarbench: ").strip()
    assert "missing.onnx" in error and json.loads(report.read_text()) == {"error": error, "exit_status": EXIT_INPUT}

    def writes_then_fails(args) -> None:
        write_json(args.json, '{"results": ["this run"]}')
        raise SetupError("a provider fell back")

    def crashes(args) -> None:
        raise RuntimeError("boom")

    commands = [Command(name, "a test command", run, flags=lambda p: p.add_argument("--json"))
                for name, run in (("writes", writes_then_fails), ("crashes", crashes))]  # fmt: skip
    assert main(["writes", "--json", str(report)], extra=commands) == EXIT_SETUP
    assert json.loads(report.read_text()) == {"results": ["this run"]}
    with pytest.raises(RuntimeError, match="boom"):
        main(["crashes", "--json", str(report)], extra=commands)
    assert json.loads(report.read_text())["error"].startswith("a bug (RuntimeError: boom)")


def test_a_provider_that_fell_back_fails_the_measuring_commands(tmp_path: Path, monkeypatch, capsys) -> None:
    """onnx eval and bench write their report, then exit 3 when a provider they were asked for did not load: the
    rows marked fell_back measure another provider, and a script must not take them for the one it asked for."""
    import torch

    from engine.cli import main
    from engine.system.ort_probe import probe_provider

    if probe_provider("CUDAExecutionProvider")["loaded"]:
        pytest.skip("CUDA really loads here: no fallback to observe")
    path = _matmul(tmp_path / "mm.onnx")
    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    report = tmp_path / "report.json"
    args = ["onnx", "eval", str(path), "--providers", "cpu,cuda", "--runs", "2", "--json", str(report), "--quiet"]
    assert main(args) == 3
    out, err = capsys.readouterr()
    assert "not measured where asked" in err and "cuda (CUDAExecutionProvider) ran on CPUExecutionProvider" in err
    assert "parity cuda (fell back: ran on CPUExecutionProvider) y: max abs 0" in out
    rows = json.loads(report.read_text())["results"]
    assert [(r["provider"], r["fell_back"]) for r in rows] == [("cpu", False), ("cuda", True)]
    assert main(["onnx", "eval", str(path), "--providers", "cpu", "--runs", "2", "--quiet"]) == 0

    # bench: a GPU machine whose onnxruntime lacks CUDA gives ort-cuda rows that ran on the CPU
    import engine.bench.sweep as sweep

    real = sweep.run_sweep

    def with_a_fallback(*a, **kw) -> dict:
        out = real(*a, **kw)
        out["results"][-1].update(fell_back=True, ran_on="CPUExecutionProvider", error_vs_fp32={"rel_l2": math.inf})
        return out

    monkeypatch.setattr(sweep, "run_sweep", with_a_fallback)
    args = ["bench", "--model", str(path), "--runtime", "ort-cpu", "--batch", "1", "--runs", "2", "--quiet"]
    assert main([*args, "--json", str(report)]) == 3
    assert "cpu ort-cpu fp32 b1 ran on CPUExecutionProvider" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a GPU this machine lacks: refused before the model is built
        assert main(["bench", "--model", str(path), "--device", "cuda", "--runs", "2", "--quiet"]) == 3
        assert "the sweep asks for cuda, but" in capsys.readouterr().err

    def refuse(token: str) -> None:
        raise ValueError(f"bare {token} in a --json report")

    written = json.loads(report.read_text(), parse_constant=refuse)
    assert written["notes"][-1] == "the model's own weights, fed seeded synthetic inputs"  # not "random weights"
    row = written["results"][-1]
    assert row["fell_back"] is True and row["error_vs_fp32"]["rel_l2"] == "Infinity"  # strict JSON
    monkeypatch.setattr(sweep, "run_sweep", real)
    assert main(args) == 0
    assert main(["bench", "--model", "onnx:" + "a" * 64, "--quiet"]) == 2  # the app's stored models: not a path
    assert "names a model the app's ONNX eval stored" in capsys.readouterr().err
    assert main(["bench", "--model", "WAV2LIP", "--quiet"]) == 2  # neither a built-in name nor a file
    assert "neither a built-in network (wav2lip, s3fd," in capsys.readouterr().err


def test_bench_exits_1_when_a_configuration_failed_or_none_was_measured(tmp_path: Path, monkeypatch, capsys) -> None:
    """A script reads the exit status before the report: 0 said "measured" for a sweep with an error row, or with
    every configuration out of memory (nothing measured at all); one row out of memory beside measured ones is 0."""
    import engine.bench.sweep as sweep
    from engine.cli import main

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    real, outcomes = sweep.run_sweep, []

    def ended_as_told(*args, **kwargs) -> dict:
        report = real(*args, **kwargs)
        for row, (status, error) in zip(report["results"], outcomes, strict=True):
            row.update(status=status, error=error)
        return report

    monkeypatch.setattr(sweep, "run_sweep", ended_as_told)
    args = ["bench", "--model", str(_matmul(tmp_path / "mm.onnx")), "--runtime", "ort-cpu", "--batch", "1,2",
            "--runs", "2", "--warmup", "0", "--quiet"]  # fmt: skip
    for rows, code in (
        ([("ok", None), ("error", "the session failed: bad node")], 1),
        ([("oom", "out of memory at batch 1"), ("oom", "out of memory at batch 2")], 1),
        ([("ok", None), ("oom", "out of memory at batch 2")], 0),
    ):
        outcomes[:] = rows
        assert main(args) == code, rows
        out = capsys.readouterr().out
        assert all(f"    {status}: {error}" in out for status, error in rows if error)  # why, under its row


def test_the_sweep_table_shows_each_figure_in_its_unit_and_keeps_its_columns_aligned(capsys) -> None:
    """What `avatarbench bench` prints: GFLOP as 1e9 FLOPs, peak memory in MiB, a dash where a figure is missing
    padded to its column, how the model ran first and the other notes and each row's warnings under it."""
    from engine.bench.cli import _print_sweep

    row = {"label": "cpu eager fp32 b1", "status": "ok", "latency": {"p50_ms": 1.5}, "samples_per_s": 12.34,
           "speedup": None, "achieved_tflops": None, "percent_of_peak": None, "peak_allocated_bytes": 100 * 2**20,
           "device_used_bytes": None, "error_vs_fp32": {"rel_l2": 1e-6}, "error": None,
           "warnings": ["it was slow"]}  # fmt: skip
    report = {"model": {"title": "Net", "flops_per_sample": 3.5e9}, "notes": ["a note", "how it ran"], "results": [row]}
    _print_sweep({**report, "model": {"title": "Tiny", "flops_per_sample": 24}})
    assert capsys.readouterr().out.startswith("Tiny (24 FLOP/sample); ")  # it read 0.00 GFLOP/sample
    _print_sweep(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["Net (3.5 GFLOP/sample); how it ran", "  note: a note"]
    header, printed = lines[2], lines[3]
    assert printed.split() == ["cpu", "eager", "fp32", "b1", "ok", "1.500", "12.3", "-", "-", "-", "100", "1.00e-06"]
    assert len(printed) == len(header) and printed.endswith(" 1.00e-06")  # every column where its heading is
    assert lines[4:] == ["    warning: it was slow"]
    for tflops, shown in ((1.23456, "1.235"), (0.00041234, "0.000412")):  # a tiny model's rate read 0.000
        _print_sweep({**report, "results": [{**row, "achieved_tflops": tflops, "warnings": []}]})
        assert capsys.readouterr().out.splitlines()[3].split()[8] == shown


def test_onnx_eval_with_images_and_labels(tmp_path: Path) -> None:
    import cv2
    import numpy as np
    from tiny_onnx import colour_classifier

    model = colour_classifier(tmp_path / "colours.onnx", layout="nhwc")
    images = []
    for name, bgr in (("red", (0, 0, 255)), ("blue", (255, 0, 0))):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((24, 24, 3), bgr, np.uint8))
        images.append(str(tmp_path / f"{name}.png"))
    report_path = tmp_path / "report.json"
    env = {"AVATARBENCH_DATA_DIR": str(tmp_path / "data")}
    args = ["--batch-sizes", "2", "--runs", "3", "--labels", "0,2", "--image-scaling", "imagenet"]
    args += ["--json", str(report_path)]
    proc = run("onnx", "eval", str(model), "--images", *images, *args, "--quiet", **env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert report["accuracy"]["topk"]["cpu"]["top1"] == 1.0 and report["input_source"] == {"image": "images"}
    bad = run("onnx", "eval", str(model), "--images", str(tmp_path / "none.png"), "--quiet", **env)
    assert bad.returncode == 2 and "not found" in bad.stderr


def test_bench_reads_external_data_beside_the_model_and_never_overwrites_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """As onnx eval does: a model named on the command line may keep its data files beside it (bench refused it)."""
    from test_onnx_model import _external_model_dir

    from engine.cli import main

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path / "data"))
    model = _external_model_dir(tmp_path / "ext")
    args = ["bench", "--model", str(model), "--runtime", "ort-cpu", "--batch", "1", "--runs", "2", "--warmup", "0",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["status"] == "ok"
    data = model.parent / "weights.bin"
    before = data.read_bytes()
    assert main([*args, "--json", str(data)]) == 2
    assert "is one of the model's external-data files" in capsys.readouterr().err and data.read_bytes() == before


def test_bench_plan_and_cost(tmp_path: Path) -> None:
    env = {"AVATARBENCH_DATA_DIR": str(tmp_path / "data")}
    report_path, csv_path = tmp_path / "bench.json", tmp_path / "bench.csv"
    args = ["--model", "wav2lip", "--batch", "1,2", "--runs", "2", "--warmup", "0", "--device", "cpu"]
    proc = run("bench", *args, "--json", str(report_path), "--csv", str(csv_path), "--quiet", "--label", "2 cores",
               **env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_path.read_text())
    assert [r["label"] for r in report["results"]] == ["cpu eager fp32 b1", "cpu eager fp32 b2"]
    assert report["label"] == "2 cores" and report["note"] == ""  # recorded with the command that made it
    assert report["command"].startswith("avatarbench bench --model wav2lip") and "'2 cores'" in report["command"]
    assert "cpu eager fp32 b2" in proc.stdout and "GFLOP/sample" in proc.stdout
    assert len(csv_path.read_text().splitlines()) == 3
    assert run("bench", "--precision", "fp64", **env).returncode == 2

    plan_path = tmp_path / "plan.json"
    plan = run("plan", "llm", "--gpu", "V100-16GB", "--count", "2", "--llm", "mistral-7b", "--max-total-tokens", "4096",
               "--quantize", "bitsandbytes-nf4", "--json", str(plan_path), **env)  # fmt: skip
    data = json.loads(plan_path.read_text())
    assert {"fits", "memory", "flags", "warnings", "reasons"} <= set(data)
    assert any("--quantize bitsandbytes-nf4 is ignored there" in w for w in data["warnings"])
    assert "text-generation-launcher" in plan.stdout
    # below 8.0 TGI serves Mistral through transformers' class, which loads no AWQ checkpoint: refused, saying why
    awq = run("plan", "llm", "--gpu", "V100-16GB", "--llm", "mistral-7b", "--quantize", "awq", **env)
    assert awq.returncode == 2 and "CausalLM.fallback" in awq.stderr
    assert run("plan", "llm", "--gpu", "B300", "--llm", "mistral-7b", **env).returncode == 2
    model = tmp_path / "models--Qwen--Qwen2-0.5B" / "snapshots" / "91d2aff"  # a Hub cache snapshot
    model.mkdir(parents=True)
    qwen2 = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                 tie_word_embeddings=True)  # fmt: skip
    (model / "config.json").write_text(json.dumps(qwen2))
    qwen = run("plan", "llm", "--gpu", "L4", "--config", str(model), "--kv-cache-dtype", "fp8_e4m3fn", **env)
    assert qwen.returncode == 0, qwen.stderr
    assert "parameters: 494 million, estimated from config.json's shape (qwen2 layers)" in qwen.stdout
    assert "--model-id Qwen/Qwen2-0.5B " in qwen.stdout and "--kv-cache-dtype fp8_e4m3fn" in qwen.stdout
    assert "KV cache: 6 KiB/token" in qwen.stdout  # 2 x 24 layers x 2 heads x 64 x 1 byte
    nothing = run("plan", "llm", "--gpu", "L4", **env)
    assert nothing.returncode == 2 and "no model: give llm" in nothing.stderr
    network_path = tmp_path / "network.json"
    network = run("plan", "network", "--gpu", "t4", "--model", "s3fd", "--precision", "fp16", "--json",
                  str(network_path), **env)  # fmt: skip
    assert network.returncode == 0 and "recommended batch at fp16: " in network.stdout  # the batch's own precision
    data = json.loads(network_path.read_text())  # says what it planned for, as plan llm's report does
    assert data["gpu"] == "NVIDIA T4" and data["model"].startswith("S3FD") and data["precision"] == "fp16"

    cost = run("cost", "--throughput", "1000", "--measured-on", "H100", "--precision", "fp16", **env)
    assert cost.returncode == 0 and "measured" in cost.stdout and "estimate" in cost.stdout
    assert "left out, with no price: V100-PCIe-16GB, " in cost.stdout  # not silently missing
    on_cpu = run("cost", "--throughput", "10", "--measured-on", "cpu", "--precision", "fp32", **env)
    assert on_cpu.returncode == 0 and "left out" not in on_cpu.stdout  # no card is estimated from a CPU
    fast = run("cost", "--throughput", "16800", "--measured-on", "H100", "--precision", "fp16", **env)
    h100 = next(line for line in fast.stdout.splitlines() if line.startswith("H100 "))
    assert " 0.0000 " not in h100 and "e-05" in h100  # about 4e-05 $ per 1000 requests: it was rounded to nothing


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: what a decompression bomb looks like before decoding."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


@pytest.mark.parametrize("command", ["lipsync", "portrait"])
def test_a_declared_giant_image_is_one_line_on_the_cli(tmp_path: Path, command: str) -> None:
    """A header claiming 64000x64000 is refused from the header: one line, exit 2, no decoder's own words."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(64000, 64000))
    assets = ROOT / "assets"
    args = ["--face", str(bomb), "--audio", str(assets / "speech.wav")] if command == "lipsync" else [
        "--source", str(bomb), "--driving", str(assets / "driving.mp4")]  # fmt: skip
    out = ["--out", str(tmp_path / "out.mp4"), "--quiet"]
    proc = run(command, *args, *out, AVATARBENCH_DATA_DIR=str(tmp_path / "data"))
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "64000x64000" in proc.stderr and "Traceback" not in proc.stderr and "CV_IO" not in proc.stderr
    assert len(lines) == 1, proc.stderr


def test_lipsync_stream_says_where_its_live_playlist_is(tmp_path: Path) -> None:
    out = tmp_path / "talk.mp4"
    assets = ROOT / "assets"
    files = ["--face", str(assets / "face.jpg"), "--audio", str(assets / "speech-gb.wav")]
    flags = ["--engine", "baseline", "--out", str(out), "--stream", "--quiet"]
    proc = run("lipsync", *files, *flags, AVATARBENCH_DATA_DIR=str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    playlist = tmp_path / "talk.stream" / "index.m3u8"
    assert f"live stream (HLS, as it was made): {playlist}" in proc.stdout
    assert "#EXT-X-ENDLIST" in playlist.read_text() and list(playlist.parent.glob("part-*.ts"))


def test_output_paths_are_checked_before_the_work(tmp_path: Path) -> None:
    """--out a folder, --json a folder, or --json on a file the run reads or writes: refused before any work (the run
    ended in a traceback after all of it, or overwrote the video or an input); --json's missing folder is made."""
    assets = ROOT / "assets"
    face, speech = assets / "face.jpg", assets / "speech-gb.wav"
    files = ["--face", str(face), "--audio", str(speech), "--engine", "baseline", "--quiet"]
    env = {"AVATARBENCH_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "folder.mp4").mkdir()
    out = str(tmp_path / "talk.mp4")
    folder = str(tmp_path / "folder.mp4")
    for flags, message in (
        (["--out", folder], f"--out {folder} is a folder; give a file name"),
        (["--out", out, "--json", str(tmp_path)], f"--json {tmp_path} is a folder"),
        (["--out", out, "--json", out], f"--json {out} is also --out"),
        (["--out", out, "--json", str(face)], f"--json {face} is also --face"),
        (["--out", str(speech), "--json", str(tmp_path / "r.json")], f"--out {speech} is also --audio"),
    ):
        proc = run("lipsync", *files, *flags, **env)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert not Path(out).exists()
    report = tmp_path / "new" / "deep" / "talk.json"
    proc = run("lipsync", *files, "--out", out, "--json", str(report), **env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["outputs"]["video"] == out and speech.stat().st_size > 1000


def test_long_text_options_are_not_taken_for_paths(tmp_path: Path) -> None:
    """Every string option is looked at as a possible input file: a JSON list of sweep points longer than a file name
    may be, or text with a NUL, is just text (it ended in OSError: File name too long); an output name over the file
    system's limit is refused before the work."""
    import argparse

    from engine.core.commands import check_output_paths
    from engine.core.errors import InputError

    points = json.dumps([{"runtime": "eager", "batch": b, "device": "cpu"} for b in range(1, 9)])
    assert len(points) > 255
    check_output_paths(argparse.Namespace(points=points, label="a\x00b", json=str(tmp_path / "r.json")))
    long_name = str(tmp_path / ("x" * 300 + ".mp4"))
    with pytest.raises(InputError, match="--out: a file or folder name is over 255 bytes"):
        check_output_paths(argparse.Namespace(out=long_name, out_is_a_file=True, json=None))
    if Path("/proc/self").is_dir():  # Linux: a folder whose permission bits allow what it refuses (to root too)
        with pytest.raises(InputError, match=r"--out /proc/x\.mp4 cannot be written in /proc \("):
            check_output_paths(argparse.Namespace(out="/proc/x.mp4", out_is_a_file=True, json=None))
    check_output_paths(argparse.Namespace(out=str(tmp_path / "ok.mp4"), out_is_a_file=True, json=None))
    assert not list(tmp_path.iterdir())  # the probe leaves nothing
    with pytest.raises(InputError, match="--csv needs a file name"):  # an empty one wrote nothing, silently
        check_output_paths(argparse.Namespace(json=None, csv=""))


def test_a_report_file_gets_its_missing_folders_and_one_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """--json or --csv written after the work: its folders are made as --out's are, and a place no file can go is a
    one-line refusal naming the flag (the measurement itself is done and shown by then)."""
    from engine.core.commands import write_json, write_output
    from engine.core.errors import InputError

    report = tmp_path / "new" / "deep" / "r.json"
    write_json(str(report), '{"a": 1}\n\n')
    assert report.read_text() == '{"a": 1}\n'
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError) as refused:
        write_output(str(blocker / "rows.csv"), "a,b", "--csv")
    assert str(refused.value).startswith(f"--csv {blocker / 'rows.csv'} could not be written: ")


def test_a_file_name_of_255_bytes_is_taken_and_one_of_256_is_refused_before_the_work(tmp_path: Path) -> None:
    """255 bytes is the longest name the common file systems keep: one byte more failed only when written."""
    import argparse

    from engine.core.commands import check_output_paths
    from engine.core.errors import InputError

    check_output_paths(argparse.Namespace(out=str(tmp_path / ("x" * 251 + ".mp4")), out_is_a_file=True, json=None))
    with pytest.raises(InputError, match="--out: a file or folder name is over 255 bytes"):
        check_output_paths(argparse.Namespace(out=str(tmp_path / ("x" * 252 + ".mp4")), out_is_a_file=True, json=None))


def test_every_output_flag_is_checked_against_the_inputs_and_links(tmp_path: Path) -> None:
    """bench's --csv was written unchecked after the sweep: onto the model itself, onto --json, into a folder. A hard
    link to an input is that input (its resolved path differs); a file in the way of a folder is refused too."""
    import argparse
    import os

    from engine.core.commands import check_output_paths
    from engine.core.errors import InputError

    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    os.link(model, tmp_path / "hard.onnx")
    for outputs, message in (
        ({"csv": str(model)}, "--csv .* is also --model"),
        ({"csv": str(tmp_path / "r.x"), "json": str(tmp_path / "r.x")}, "--csv .* is also --json"),
        ({"json": str(tmp_path / "hard.onnx")}, "--json .* is also --model"),
        ({"csv": str(tmp_path)}, "--csv .* is a folder"),
        ({"json": str(model / "r.json")}, "m.onnx is a file, so no folder can be made there"),
    ):
        with pytest.raises(InputError, match=message):
            check_output_paths(argparse.Namespace(model=str(model), **{"json": None, "csv": None, **outputs}))
    check_output_paths(argparse.Namespace(model=str(model), json=str(tmp_path / "new" / "r.json"), csv=None))
    assert model.read_bytes() == b"model"
    # `missing/../m.onnx` is m.onnx once the missing folder is made: it overwrote the input
    with pytest.raises(InputError, match=r"--json .* is also --model"):
        check_output_paths(argparse.Namespace(model=str(model), json=str(tmp_path / "sub" / ".." / "m.onnx")))
    # each file of a list flag (onnx eval's --images) is an input too; portrait's template goes beside --out
    picture = tmp_path / "x.png"
    picture.write_bytes(b"png")
    with pytest.raises(InputError, match=r"--json .*x\.png is also --images"):
        check_output_paths(argparse.Namespace(model=str(model), images=[str(model), str(picture)], json=str(picture)))
    video = str(tmp_path / "a.mp4")
    with pytest.raises(InputError, match=r"--json .*a\.npz is also --save-template"):
        check_output_paths(argparse.Namespace(out=video, out_is_a_file=True, save_template=True,
                                              json=str(tmp_path / "a.npz")))  # fmt: skip
    check_output_paths(argparse.Namespace(out=video, out_is_a_file=True, save_template=False,
                                          json=str(tmp_path / "a.npz")))  # fmt: skip
    template = tmp_path / "a.npz"
    template.write_bytes(b"npz")  # driving by the template that --save-template would overwrite
    with pytest.raises(InputError, match=r"^--save-template .*a\.npz is also --driving"):
        check_output_paths(argparse.Namespace(driving=str(template), out=video, out_is_a_file=True, save_template=True))
    assert picture.read_bytes() == b"png"
    # --stream writes <out>.stream/ beside --out: a file there was a traceback, an input in it was overwritten
    video = {"out": str(tmp_path / "talk.mp4"), "out_is_a_file": True, "stream": True, "json": None}
    (tmp_path / "talk.stream").write_text("a file")
    with pytest.raises(InputError, match=r"talk\.stream, which is a file"):
        check_output_paths(argparse.Namespace(face=str(model), **video))
    (tmp_path / "talk.stream").unlink()
    (tmp_path / "talk.stream").mkdir()
    (tmp_path / "talk.stream" / "a.wav").write_bytes(b"speech")
    with pytest.raises(InputError, match=r"--audio .*a\.wav is in .*talk\.stream, where --stream writes"):
        check_output_paths(argparse.Namespace(audio=str(tmp_path / "talk.stream" / "a.wav"), **video))
    check_output_paths(argparse.Namespace(audio=str(tmp_path / "talk.stream" / "a.wav"), **{**video, "stream": False}))
    playlist = str(tmp_path / "talk.stream" / "index.m3u8")  # --json there replaced the stream's playlist
    with pytest.raises(InputError, match=r"--json .*index\.m3u8 is in .*talk\.stream, where --stream writes"):
        check_output_paths(argparse.Namespace(**{**video, "json": playlist}))


def test_portrait_export_checks_its_folder_first(tmp_path: Path, capsys) -> None:
    """--out a file, empty, or where no folder can be made: one line before the weights load (they were tracebacks
    after it, and an empty --out wrote into the current folder)."""
    from engine.cli import main

    afile = tmp_path / "face.jpg"
    afile.write_bytes(b"x")
    for out, message in ((afile, "is a file"), ("", "--out is empty"), (afile / "sub", "the folder cannot be made")):
        assert main(["portrait-export", "--weights", str(tmp_path / "none"), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    # the weights are found as `portrait` finds them: a folder without them, or a file, is said
    for weights, message in ((tmp_path / "none", "no LivePortrait weights in "), (afile, "face.jpg is a file")):
        assert main(["portrait-export", "--weights", str(weights), "--out", str(tmp_path / "onnx" / "fp32")]) == 3
        assert message in capsys.readouterr().err
        assert not (tmp_path / "onnx").exists()  # the folders it made for the export were left behind, empty
    kept = tmp_path / "earlier"
    (kept / "fp16").mkdir(parents=True)  # a folder that was there, or holds something, stays
    assert main(["portrait-export", "--weights", str(afile), "--out", str(kept / "fp32")]) == 3
    assert sorted(p.name for p in kept.iterdir()) == ["fp16"]


@pytest.mark.parametrize(("signum", "code", "said"), [(2, 130, "interrupted"), (15, 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_stops_a_model_that_runs_forever(tmp_path: Path, signum: int, code: int, said: str) -> None:
    """A Loop of 2**62 steps is one C++ call that Python's own signal handling would wait out: Ctrl-C (or SIGTERM,
    which would otherwise end Python at once, leaving the prepared model behind) sets the sessions' terminate flag,
    so the command stops at once, its temporary files removed."""
    import signal
    import time

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("v_in", "v_out", "x", "y")]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), value[0]],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), value[1]],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )  # fmt: skip
    steps = [numpy_helper.from_array(np.array(2**62, np.int64), "M"), numpy_helper.from_array(np.array(True), "c")]
    graph = helper.make_graph([helper.make_node("Loop", ["M", "c", "x"], ["y"], body=body)], "g", [value[2]],
                              [value[3]], steps)  # fmt: skip
    path = tmp_path / "forever.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    args = ["onnx", "eval", str(path), "--runs", "1", "--warmup", "0", "--quiet"]
    env = {**os.environ, "AVATARBENCH_DATA_DIR": str(tmp_path / "data")}
    # A shell's background job (CI run with &) ignores SIGINT, and its children inherit that: ask for the default.
    proc = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    time.sleep(8)  # imports, the checks, the session: then the endless run
    assert proc.poll() is None, proc.communicate()
    assert list((tmp_path / "data").rglob("onnx-*"))  # the prepared model, while it runs
    proc.send_signal(signum)
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code and said in err and time.monotonic() - started < 20, err
    assert not list((tmp_path / "data").rglob("onnx-*"))


def test_a_value_starting_with_a_minus_and_a_digit_is_a_value() -> None:
    """`--pads -5,0,0,0` (negative pads crop, as upstream's) was refused by argparse as an unknown flag."""
    from engine.cli import build_parser, engine_commands

    args = build_parser(engine_commands()).parse_args(
        [
            "lipsync",
            "--face",
            "f.jpg",
            "--audio",
            "a.wav",
            "--out",
            "o.mp4",
            "--pads",
            "-5,0,0,0",
            "--audio-offset",
            "-2",
        ]
    )
    assert (args.pads, args.audio_offset) == ("-5,0,0,0", "-2")


def test_a_loud_warning_is_printed_once_as_a_warning() -> None:
    """A provider's fallback warning starts with "WARNING:" already: it printed as "warning: WARNING: ..."."""
    from engine.core.commands import warning_line

    loud = "WARNING: CUDAExecutionProvider was requested but the session runs on CPUExecutionProvider"
    assert warning_line(loud) == loud
    assert warning_line("running on the CPU") == "warning: running on the CPU"


def test_cost_never_writes_its_report_over_the_prices_it_reads(tmp_path: Path, monkeypatch, capsys) -> None:
    from engine.cli import main
    from engine.core.settings import get_settings

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()  # read once per process: this test's data folder
    prices = tmp_path / "prices.json"
    prices.write_text('{"prices": {"T4": 0.5}}')
    assert main(["cost", "--throughput", "10", "--measured-on", "T4", "--json", str(prices)]) == 2
    assert "is the price file cost reads" in capsys.readouterr().err
    assert prices.read_text() == '{"prices": {"T4": 0.5}}'
    prices.unlink()  # not there yet: written, it would break every later cost
    assert main(["cost", "--throughput", "10", "--measured-on", "T4", "--json", str(prices)]) == 2
    assert not prices.exists()
    report = str(tmp_path / "c.json")
    assert main(["cost", "--throughput", "10", "--measured-on", "H100-PCIe", "--json", report]) == 0
    assert "measured; no price for this card" in capsys.readouterr().out  # the card it was measured on, unpriced
    get_settings.cache_clear()


def test_cost_of_a_cpu_measurement_without_its_price_says_what_prices_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every row read "not estimated: measured on the CPU", with nothing to say what would price anything."""
    from engine.cli import main
    from engine.core.settings import get_settings

    monkeypatch.setenv("AVATARBENCH_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    assert main(["cost", "--throughput", "10", "--measured-on", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "a card's speed cannot be told from the CPU's, so nothing above is priced: --cpu-price-per-hour (the CPU "
        "machine's dollars per hour) prices the measurement itself")  # fmt: skip
    assert main(["cost", "--throughput", "10", "--measured-on", "cpu", "--cpu-price-per-hour", "0.34"]) == 0
    assert "--cpu-price-per-hour" not in capsys.readouterr().out
    get_settings.cache_clear()


def test_a_permission_refused_by_the_machine_is_one_line(monkeypatch, capsys) -> None:
    """A folder or file this user may not read (Path.exists raises on Python 3.11) ended in a traceback."""
    import engine.bench.planner
    from engine.cli import main

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/srv/weights/wav2lip_gan.pth")

    monkeypatch.setattr(engine.bench.planner, "cost_for", denied)
    assert main(["cost", "--throughput", "10", "--measured-on", "T4"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarbench: permission denied: /srv/weights/wav2lip_gan.pth: give this user access")
    assert "\n" not in err


def test_numbers_after_a_flag_as_upstream_writes_them_get_the_comma_form(capsys) -> None:
    """Upstream takes `--pads 0 10 0 0`; ours was a bare "unrecognized arguments: 10 0 0"."""
    from engine.cli import main

    face, speech = str(ROOT / "assets" / "face.jpg"), str(ROOT / "assets" / "speech.wav")
    for extra, hint in ((["--pads", "0", "10", "-5", "0"], True), (["--bogus"], False)):
        with pytest.raises(SystemExit) as ended:
            main(["lipsync", "--face", face, "--audio", speech, "--out", "o.mp4", *extra])
        err = capsys.readouterr().err
        assert ended.value.code == 2 and f"unrecognized arguments: {' '.join(extra[2:] or extra)}" in err
        assert ("written with commas (--pads 0,10,0,0)" in err) == hint


def test_a_one_frame_portrait_is_one_frame(tmp_path: Path, capsys) -> None:
    """Every portrait driven by an image was "1 frames at 25 fps" (the tabs said it in the singular already)."""
    from engine.cli import main

    assets = ROOT / "assets"
    out = tmp_path / "still.mp4"
    args = ["--source", str(assets / "face.jpg"), "--driving", str(assets / "driving-pose.jpg"), "--out", str(out)]
    assert main(["portrait", *args, "--engine", "baseline", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 1 frame at 25 fps, baseline (torch) on ")


def test_a_reader_that_goes_away_ends_the_command_without_a_traceback() -> None:
    """`avatarbench plan llm ... | head -1`: the closed pipe was a BrokenPipeError traceback on the screen, exit 1 as
    for a bug. Now nothing is printed and the exit status is 141, a shell's for a writer whose reader left."""
    command = [sys.executable, "-c", CONSOLE_SCRIPT, "plan", "llm", "--gpu", "H100", "--llm", "mistral-7b"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # before it writes a line: it is still starting
    errors = child.stderr.read().decode()
    assert child.wait(timeout=240) == 141 and errors == ""


def test_the_doctors_exit_code_is_1_only_for_a_problem(monkeypatch, capsys) -> None:
    """Scripts and CI gate on `avatarbench doctor`: a warning or information is advice, not a failure."""
    import engine.system.doctor
    from engine.cli import main
    from engine.system.checks import INFO, PROBLEM, WARNING, Check, DoctorReport

    for status, code in ((INFO, 0), (WARNING, 0), (PROBLEM, 1)):
        report = DoctorReport([Check("weights", status, "what was found", "the fix")])
        monkeypatch.setattr(engine.system.doctor, "run_doctor", lambda report=report: report)
        assert main(["doctor"]) == code, status
        assert "weights: what was found" in capsys.readouterr().out
        assert main(["doctor", "--json"]) == code
        assert json.loads(capsys.readouterr().out)["checks"][0]["status"] == status


def _telemetry_sleeps(monkeypatch, capsys, args: list[str], interrupt_after: int = 0) -> tuple[list[float], int]:
    """`avatarbench telemetry ARGS` with time.sleep recorded (Ctrl-C on wait `interrupt_after`, where given): the
    waits it made and the samples it printed."""
    import time

    from engine.cli import main

    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == interrupt_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    assert main(["telemetry", "--json", *args]) == 0
    return slept, len(capsys.readouterr().out.splitlines())


def test_telemetry_waits_one_interval_per_sample_and_stops_at_the_count(monkeypatch, capsys) -> None:
    """--count N prints N samples an interval apart; one sample waits only long enough to measure the CPU; the
    interval's ends, 0.1 and 60 s, are allowed and just past them refused; --interval alone watches until Ctrl-C."""
    import engine.core.settings
    from engine.cli import main
    from engine.core.settings import load_settings

    assert _telemetry_sleeps(monkeypatch, capsys, ["--interval", "2", "--count", "3"]) == ([2.0, 2.0, 2.0], 3)
    assert _telemetry_sleeps(monkeypatch, capsys, ["--interval", "0.1", "--count", "1"]) == ([0.1], 1)
    assert _telemetry_sleeps(monkeypatch, capsys, ["--interval", "60", "--count", "1"]) == ([60.0], 1)
    for refused in ("0.09", "60.5"):
        assert main(["telemetry", "--interval", refused, "--count", "1"]) == 2, refused
    slow = load_settings({"AVATARBENCH_TELEMETRY_INTERVAL": "5"})
    monkeypatch.setattr(engine.core.settings, "get_settings", lambda: slow)
    assert _telemetry_sleeps(monkeypatch, capsys, []) == ([0.25], 1)
    assert _telemetry_sleeps(monkeypatch, capsys, ["--count", "2"]) == ([5.0, 5.0], 2)  # the setting's interval
    assert _telemetry_sleeps(monkeypatch, capsys, ["--interval", "3"], interrupt_after=3) == ([3.0] * 3, 2)


def test_a_run_prints_each_stages_time_and_a_rate_only_where_the_time_shows(capsys, tmp_path: Path) -> None:
    """A still face's decode takes microseconds: "0.000 s (1158593.38/s)" gave the timer's noise as a rate."""
    import argparse

    from engine.core.commands import print_run
    from engine.core.results import RunResult, StageTiming

    result = RunResult(warnings=["no GPU"])
    result.stages = [StageTiming("decode", 0.0000004, 1), StageTiming("inference", 1.5, 30), StageTiming("mux", 0.2)]
    assert print_run(argparse.Namespace(json=str(tmp_path / "r.json")), result, "out.mp4: 30 frames") == 0
    out, err = capsys.readouterr()
    assert err == "warning: no GPU\n"
    assert out.splitlines() == [
        "out.mp4: 30 frames",
        "  decode              0.000 s",
        "  inference           1.500 s (20.00/s)",
        "  mux                 0.200 s",
    ]
    assert json.loads((tmp_path / "r.json").read_text())["stages"][1]["items"] == 30


def test_plan_llm_takes_tgis_bitsandbytes_4_bit_quantizations() -> None:
    """`--quantize bitsandbytes-nf4|bitsandbytes-fp4`, as TGI's launcher spells them, reach the planner."""
    from engine.bench.config import LlmRequest
    from engine.cli import build_parser, engine_commands
    from engine.core.options import from_args

    parser = build_parser(engine_commands())
    for kind in ("bitsandbytes-nf4", "bitsandbytes-fp4"):
        args = parser.parse_args(["plan", "llm", "--gpu", "L4", "--llm", "mistral-7b", "--quantize", kind])
        assert from_args(LlmRequest, args).quantize == kind
