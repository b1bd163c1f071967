import json
import pickle
import time

import pytest

from engine.core.results import RunResult, StageTiming


def test_stages_are_timed_in_order_and_the_slowest_is_named() -> None:
    result = RunResult(device="cpu", precision="fp32")
    with result.stage("decode", items=10):
        time.sleep(0.01)
    with result.stage("infer") as rec:
        time.sleep(0.03)
        rec.items = 4
    assert [s.name for s in result.stages] == ["decode", "infer"]
    assert result.slowest_stage.name == "infer"
    assert result.stages[1].items == 4 and result.stages[1].items_per_s > 0


def test_a_failing_stage_is_still_recorded() -> None:
    result = RunResult()
    try:
        with result.stage("encode"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert result.stages[0].name == "encode"


def test_round_trips_through_json_and_pickle() -> None:
    result = RunResult(device="cuda:0", device_name="H100", precision="fp16", outputs={"video": "/tmp/x.mp4"})
    result.stages.append(StageTiming("infer", 1.5, 100))
    result.warn("ONNX Runtime fell back to CPU")
    result.warn("ONNX Runtime fell back to CPU")
    result.measurement = {"wall_s": 1.7, "peak_rss_bytes": 2**30, "telemetry": [[0.0, 50.0, 2**31, 300.0, 12.5, 2**30]]}
    assert result.warnings == ["ONNX Runtime fell back to CPU"]
    data = json.loads(result.to_json())
    assert data["slowest_stage"] == "infer" and data["measurement"]["peak_rss_bytes"] == 2**30
    assert RunResult.from_dict(data) == result
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_stored_result_with_the_old_whole_process_figures_still_loads() -> None:
    old = {"device": "cpu", "stages": [{"name": "infer", "seconds": 1.0}], "peak_host_bytes": 5, "total_seconds": 1.0}
    result = RunResult.from_dict(old)
    assert result.stages == [StageTiming("infer", 1.0)] and result.measurement == {}


def test_a_stage_entered_per_batch_accumulates_into_one_total() -> None:
    result = RunResult()
    for _ in range(3):
        with result.stage("infer", items=8):
            time.sleep(0.002)
    with result.stage("encode"):
        pass
    assert [s.name for s in result.stages] == ["infer", "encode"]
    assert result.stages[0].items == 24 and result.stages[0].seconds >= 0.006


def test_a_stages_total_adds_every_entry_and_the_slowest_is_the_largest_total(monkeypatch) -> None:
    """On a clock that moves only as told: the stage entered three times totals its 6 s (not its last 3 s) and its
    16 items (an entry that counted none adds none), and it is the slowest though another stage came after it."""
    from engine.core import results

    now = [0.0]
    monkeypatch.setattr(results.time, "perf_counter", lambda: now[0])
    result = RunResult()
    for seconds, items in ((1.0, 8), (2.0, None), (3.0, 8)):
        with result.stage("infer", items=items):
            now[0] += seconds
    with result.stage("encode", items=4):
        now[0] += 2.5
    assert [(s.name, s.seconds, s.items) for s in result.stages] == [("infer", 6.0, 16), ("encode", 2.5, 4)]
    assert result.slowest_stage.name == "infer" and result.to_dict()["slowest_stage"] == "infer"
    assert result.stages[0].items_per_s == pytest.approx(16 / 6)


def test_a_stage_of_no_measurable_time_has_no_rate() -> None:
    """A stored stage of 0 s (a clock too coarse for it) reads as no rate, not a division by zero."""
    assert StageTiming("encode", 0.0, 5).items_per_s is None and StageTiming("encode", 1.0, 0).items_per_s is None
