from types import SimpleNamespace

import psutil
import pytest
import torch

from engine.core.device import (
    DeviceError,
    apply_backend_flags,
    auto_precision,
    batch_within,
    capabilities,
    cuda_unavailable_reason,
    current_backend_flags,
    is_out_of_memory,
    not_finite_hint,
    pad_batch,
    precision_dtype,
    resolve_device,
    run_with_oom_backoff,
    set_memory_fraction,
    usable_gpu_memory,
    usable_host_memory,
)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


@needs_no_cuda
def test_auto_falls_back_to_cpu_and_says_why(monkeypatch) -> None:
    choice = resolve_device("auto")
    assert choice.device.type == "cpu" and not choice.is_cuda
    assert choice.reason == f"no GPU: {cuda_unavailable_reason()}"  # the run's warning adds "running on the CPU: "
    # the app's broker places jobs on "cpu" when there is no GPU: the reason is that, not "CPU requested"
    assert resolve_device("cpu").reason.startswith("no GPU: ")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a Ray CPU actor hides the cluster's GPUs on purpose
    assert resolve_device("cpu").reason == "CPU requested"


@needs_no_cuda
def test_asking_for_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="use --device cpu or auto"):
        resolve_device("cuda:0")


def test_why_there_is_no_gpu_says_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only PyTorch needs another install; a CUDA build without a usable card needs the driver looked at."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda_unavailable_reason() == f"this PyTorch ({torch.__version__}) is a CPU-only build"
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert cuda_unavailable_reason().startswith(f"PyTorch {torch.__version__} is built for CUDA 12.6, but no usable")


def test_cpu_capabilities_and_precisions() -> None:
    caps = capabilities(torch.device("cpu"))
    assert caps.precisions == ["fp32", "bf16"] and auto_precision(caps) == "fp32"
    assert precision_dtype("bf16", caps) is torch.bfloat16
    assert precision_dtype("BF16", caps) is torch.bfloat16  # as a flag or a form may write it
    with pytest.raises(DeviceError, match="fp16 is not supported"):
        precision_dtype("fp16", caps)
    with pytest.raises(ValueError, match="not one of"):
        precision_dtype("int3", caps)


def test_backend_flags_are_set_explicitly() -> None:
    before = current_backend_flags()
    try:
        flags = apply_backend_flags(cudnn_benchmark=True, tf32=True)
        assert flags.cudnn_benchmark and flags.tf32
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"  # convolutions too: most of our networks
        flags = apply_backend_flags(cudnn_benchmark=False, tf32=False)
        assert not flags.cudnn_benchmark and not flags.tf32
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        apply_backend_flags(before.cudnn_benchmark, before.tf32)


def test_memory_fraction_is_a_no_op_on_cpu_and_validated() -> None:
    assert set_memory_fraction(0.5, torch.device("cpu")) is False
    assert set_memory_fraction(1.0, torch.device("cpu")) is False  # the whole card is a share too
    with pytest.raises(ValueError):
        set_memory_fraction(0.0, torch.device("cpu"))


def test_lowering_the_memory_cap_empties_the_cache_first(monkeypatch) -> None:
    """PyTorch checks the cap only when it asks the driver for memory: blocks cached under a larger share would be
    handed out past a lowered one (seen on an H200: a job capped at 2% got a 7 GB block a previous test had freed)."""
    cap, calls = [1.0], []
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: cap[0])
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device: calls.append(f"cap {f}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    cuda = torch.device("cuda", 0)
    assert set_memory_fraction(0.25, cuda) and calls == ["empty", "cap 0.25"]
    cap[0], calls[:] = 0.25, []
    set_memory_fraction(0.5, cuda)  # a larger share keeps what is cached: it is within the cap
    assert calls == ["cap 0.5"]
    cap[0], calls[:] = 0.5, []
    set_memory_fraction(0.5, cuda)  # the next job at the same share keeps it too: an empty cache costs each job
    assert calls == ["cap 0.5"]


class FakeOrtError(Exception):
    """Stands in for onnxruntime's RuntimeException, which carries its module name."""


FakeOrtError.__module__ = "onnxruntime.capi.onnxruntime_pybind11_state"


def test_out_of_memory_is_recognised_only_for_real_allocation_failures() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(
        FakeOrtError("BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer")
    )
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    # the host's: a CPU sweep point recorded it as an error, and lip-sync ended in a traceback rather than halving
    host = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
    assert is_out_of_memory(RuntimeError(host))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB"))
    assert not is_out_of_memory(FakeOrtError("Invalid input name: x"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an error type that can mean OOM


def test_backoff_halves_the_batch_on_oom_until_it_fits() -> None:
    calls, backoffs = [], []

    def work(batch: int) -> str:
        calls.append(batch)
        if batch > 16:
            raise torch.OutOfMemoryError(f"CUDA out of memory at batch {batch}")
        return f"ran {batch}"

    result, used = run_with_oom_backoff(work, 64, on_backoff=lambda a, b, e: backoffs.append((a, b)))
    assert (result, used) == ("ran 16", 16)
    assert calls == [64, 32, 16]
    assert backoffs == [(64, 32), (32, 16)]


def test_backoff_lets_every_other_error_through_unchanged() -> None:
    calls = []

    def work(batch: int) -> None:
        calls.append(batch)
        raise ValueError("shape mismatch: expected (B, 6, 96, 96)")

    with pytest.raises(ValueError, match="shape mismatch"):
        run_with_oom_backoff(work, 64)
    assert calls == [64]


def test_backoff_gives_up_at_the_minimum_batch_with_the_oom_itself() -> None:
    def work(batch: int) -> None:
        raise FakeOrtError("Failed to allocate memory")

    with pytest.raises(FakeOrtError):
        run_with_oom_backoff(work, 8, min_batch_size=2)
    with pytest.raises(ValueError):
        run_with_oom_backoff(work, 0)
    with pytest.raises(ValueError):
        run_with_oom_backoff(work, 8, min_batch_size=0)


def test_backoff_never_goes_below_the_minimum_batch() -> None:
    """Halving 6 gives 3, under a minimum of 4 (a model that needs 4 at once): the retry is at 4."""
    calls = []

    def work(batch: int) -> int:
        calls.append(batch)
        if batch > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return batch

    assert run_with_oom_backoff(work, 6, min_batch_size=4) == (4, 4) and calls == [6, 4]


def test_a_non_finite_output_is_explained_by_its_precision() -> None:
    assert "the range fp16 lacks" in not_finite_hint(torch.float16)
    assert not_finite_hint(torch.bfloat16).startswith("not a matter of range")
    assert not_finite_hint(torch.float32).startswith("not a matter of range")


def test_host_memory_for_a_job_is_what_is_available_within_its_cap_less_what_it_holds() -> None:
    """A broker worker is stopped when its whole RSS passes AVATARBENCH_JOB_MEMORY_GB: what it holds counts."""
    held = psutil.Process().memory_info().rss
    available = psutil.virtual_memory().available
    assert usable_host_memory(held / 2**30) == 0  # already at the cap
    roomy = usable_host_memory(4096.0)
    assert roomy > 0 and abs(roomy - available) < 0.1 * available
    capped = usable_host_memory((held + 2**30) / 2**30)
    assert abs(capped - min(2**30, available)) < 2**26  # what the test process allocates meanwhile


def test_batch_within_is_the_largest_power_of_two_that_fits() -> None:
    assert batch_within(100 * 2**20, 14 * 2**20) == 4  # 7 fit
    assert batch_within(64, 8) == 8 and batch_within(63, 8) == 4
    assert batch_within(0, 8) == 1 and batch_within(5, 0) == 4


def _visible_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """This process sees `count` CUDA devices (none is touched: resolve_device only counts them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_a_gpu_is_placed_by_its_index_and_one_past_the_visible_ones_is_refused_with_their_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job queued for cuda:1 must run on cuda:1 (bare "cuda" is the first card), and a card that is not there is
    refused with the indices that are, not a CUDA error from deep inside the run."""
    _visible_gpus(monkeypatch, 2)
    assert resolve_device("cuda").device == torch.device("cuda", 0)
    assert resolve_device("cuda:1").device == torch.device("cuda", 1)
    assert resolve_device("cuda:1").reason == "requested"
    with pytest.raises(DeviceError) as refused:
        resolve_device("cuda:2")
    assert str(refused.value) == "device 'cuda:2' requested but only 2 CUDA device(s) are visible (0..1)"


@pytest.mark.parametrize(
    ("major", "minor", "precisions", "tensor_cores", "notes", "auto"),
    [
        (5, 2, ["fp32"], False, 2, "fp32"),  # Maxwell: fp16 is not offered (auto picked it, and was refused)
        (6, 0, ["fp32", "fp16"], False, 2, "fp16"),  # P100: double-rate fp16, no tensor cores
        (6, 1, ["fp32", "fp16"], False, 2, "fp32"),  # GTX 1080, P4, P40: fp16 at 1/64 of fp32's rate
        (7, 5, ["fp32", "fp16"], True, 1, "fp16"),  # Turing (T4): tensor cores, no bf16 or TF32
        (8, 0, ["fp32", "tf32", "fp16", "bf16"], True, 0, "fp16"),  # Ampere (A100)
    ],
)
def test_a_gpus_precisions_follow_its_compute_capability(
    monkeypatch: pytest.MonkeyPatch,
    major: int,
    minor: int,
    precisions: list[str],
    tensor_cores: bool,
    notes: int,
    auto: str,
) -> None:
    """What the precision options offer on a card: bf16 or TF32 offered on a T4 fails every run that picks it; and
    what `auto` picks: fp16 only where it is at least as fast as fp32."""
    card = SimpleNamespace(major=major, minor=minor, name="a card", total_memory=16 * 2**30, multi_processor_count=40)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    caps = capabilities(torch.device("cuda", 0))
    assert caps.precisions == precisions and caps.tensor_cores is tensor_cores and len(caps.notes) == notes
    assert auto_precision(caps) == auto
    if (major, minor) == (6, 1):
        assert "fp16 arithmetic runs at 1/64 of fp32's rate; auto precision is fp32" in caps.notes[-1]
    assert caps.compute_capability == f"{major}.{minor}" and caps.total_memory_bytes == 16 * 2**30


def test_a_job_may_take_the_free_memory_within_its_cap_less_what_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """How large a batch a job on a shared card may plan for: neither more than is free (another process holds the
    rest) nor more than its share allows beyond what its own cache holds already."""
    gib = 2**30
    free, reserved = [30 * gib], [4 * gib]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[0], 80 * gib))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 0.25)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: reserved[0])
    cuda = torch.device("cuda", 0)
    assert usable_gpu_memory(cuda) == 16 * gib  # its share, 20 GiB, less the 4 it holds
    free[0] = 10 * gib
    assert usable_gpu_memory(cuda) == 10 * gib  # what is free, where that is less
    reserved[0] = 25 * gib
    assert usable_gpu_memory(cuda) == 0  # past its share already: nothing more, never a negative batch budget


def test_a_short_batch_is_filled_with_its_last_row_and_a_full_one_is_left_alone() -> None:
    """Compiled graphs and TensorRT engines see one batch size: the rows added repeat the last real one (the caller
    cuts their outputs off), and a batch already that large is passed on as it is."""
    batch = torch.arange(6.0).reshape(3, 2)
    assert pad_batch(batch, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_batch(batch, 3) is batch and pad_batch(batch, 2) is batch


def test_backoff_hands_the_cache_back_before_each_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed attempt's cached blocks go back to the driver before the smaller batch runs: held in PyTorch's
    cache, they would leave the retry no more room than the attempt had."""
    events: list[int | str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("release"))

    def work(batch: int) -> int:
        events.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return batch

    assert run_with_oom_backoff(work, 8) == (2, 2)
    assert events == [8, "release", 4, "release", 2]
