"""The ONNX eval tab: pick a built-in model or upload one, inspect it, queue an evaluation, watch it, read
and compare results. Also registers the job API: /onnx_submit, /onnx_status, /onnx_queue, /onnx_result.

Evaluations are jobs (engine.onnx.jobs), not requests: the button only queues one, and a timer polls
its status until it finishes, so a closed tab loses nothing and the history can reopen any result.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from engine.core.parsing import int_list, name_values
from engine.jobs.store import DONE, FAILED, StoreError
from engine.onnx.evaluate import PROVIDERS
from engine.onnx.examples import EXAMPLES, example_path
from engine.onnx.images import CHANNEL_ORDERS, RESIZE_MODES, SCALINGS
from engine.onnx.jobs import OnnxEvalJobs
from engine.onnx.model import ACCEPTED, Limits, file_sha256, inspect_model, prepare_model
from ui.onnx_report import (
    ACCURACY_HEADERS,
    COMPARE_HEADERS,
    IO_HEADERS,
    PARITY_HEADERS,
    RESULT_HEADERS,
    accuracy_rows,
    compare_rows,
    inspection_markdown,
    io_rows,
    latency_figure,
    parity_rows,
    result_rows,
    summary_markdown,
    throughput_figure,
)
from ui.widgets import finished_results, job_ids, job_poller, when

log = logging.getLogger(__name__)
HISTORY_HEADERS = ["job", "model", "status", "providers", "device", "submitted", "best samples/s", "error"]
_EXAMPLE = "Built-in example"
_UPLOAD = "Upload"


def _provider_choices() -> list[tuple[str, str]]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [(key if name in available else f"{key} (not in this onnxruntime)", key) for key, name in PROVIDERS.items()]


def status_markdown(status: dict) -> str:
    state = status["status"]
    head = f"Job `{status['id']}` · **{state}** · {status['model_name']} on `{status['device']}`"
    if state == "queued":
        return f"{head} · position {status['position']} in the `{status['device']}` queue"
    if state == "running":
        return f"{head} · {status['progress'] * 100:.0f}% · {status['progress_label']}"
    if state == FAILED:
        return f"{head}\n\n❌ {status['error']}"
    took = (status["finished"] or 0) - (status["started"] or status["finished"] or 0)
    return f"{head} · finished {when(status['finished'])} in {took:.1f}s"


def _best_throughput(report: dict | None) -> Any:
    values = [r["samples_per_s"] for r in (report or {}).get("results", []) if r.get("samples_per_s")]
    return round(max(values), 1) if values else ""


def build_onnx_eval_tab(settings: Any, jobs: OnnxEvalJobs) -> None:
    """Render the tab in the current Blocks context and register the job API endpoints."""
    limits = Limits(max_file_bytes=settings.max_upload_bytes)
    gr.Markdown(
        "Evaluate any ONNX model on every execution provider: latency percentiles, throughput, speed-up over "
        "the CPU, parity between providers and accuracy on your data. Each evaluation is a queued job; results "
        f"are kept. Accepted: {ACCEPTED}. The built-in examples are exports of our own networks with random "
        "weights (made on first use, no download)."
    )
    job_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio([_EXAMPLE, _UPLOAD], value=_EXAMPLE, label="Model")
            example = gr.Dropdown(
                [(e.title, e.name) for e in EXAMPLES.values()], value="wav2lip", label="Built-in example"
            )
            upload = gr.File(
                label="ONNX model (.onnx, or .zip with external data)", file_types=[".onnx", ".zip"], visible=False
            )
            symbols = gr.Textbox(label="Symbolic dimensions other than the batch (NAME=VALUE, comma-separated)")
            inspect_btn = gr.Button("Inspect")
            providers = gr.CheckboxGroup(_provider_choices(), value=["cpu"], label="Execution providers")
            with gr.Row():
                batches = gr.Textbox(value="1,8", label="Batch sizes (when the batch is free)")
                runs = gr.Number(value=50, precision=0, minimum=1, maximum=10_000, label="Timed runs")
                warmup = gr.Number(value=5, precision=0, minimum=0, maximum=1000, label="Warm-up runs")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
            with gr.Accordion("TensorRT", open=False), gr.Row():
                trt_fp16 = gr.Checkbox(value=False, label="Allow fp16 engines")
                trt_workspace = gr.Number(value=4, minimum=0.0625, maximum=1024, label="Workspace (GiB)")
            with gr.Accordion("Your data (default: seeded synthetic inputs)", open=False):
                inputs_npz = gr.File(label="Inputs .npz (arrays keyed by input name)", file_types=[".npz"])
                expected_npz = gr.File(label="Expected outputs .npz (keyed by output name)", file_types=[".npz"])
                images = gr.File(label="Images for an image input", file_count="multiple", file_types=["image"])
                with gr.Row():
                    image_input = gr.Textbox(label="Image input name (empty: the first image-shaped input)")
                    resize = gr.Dropdown(list(RESIZE_MODES), value="stretch", label="Resize")
                    scaling = gr.Dropdown(list(SCALINGS), value="0-1", label="Scaling")
                    channels = gr.Radio(list(CHANNEL_ORDERS), value="rgb", label="Channel order")
                labels = gr.Textbox(label="Class labels, one per sample of the first batch (top-1/top-5)")
            submit = gr.Button("Queue evaluation", variant="primary")
        with gr.Column(scale=2):
            status = gr.Markdown("No evaluation yet.")
            with gr.Accordion("Inspection", open=True):
                inspection = gr.Markdown()
                io_table = gr.Dataframe(headers=IO_HEADERS, interactive=False, wrap=True)
            summary = gr.Markdown()
            results = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, label="Results")
            with gr.Row():
                latency_plot = gr.Plot(show_label=False)
                throughput_plot = gr.Plot(show_label=False)
            parity = gr.Dataframe(headers=PARITY_HEADERS, interactive=False, label="Parity against CPU fp32")
            accuracy = gr.Dataframe(headers=ACCURACY_HEADERS, interactive=False, label="Accuracy on your data")
            report_file = gr.File(label="Full report (JSON)", interactive=False)
    with gr.Accordion("History and compare", open=False):
        with gr.Row():
            refresh = gr.Button("Refresh")
            chosen = gr.Textbox(label="Job ids (comma-separated): open the first, compare all")
            open_btn = gr.Button("Open")
            compare_btn = gr.Button("Compare")
        history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, wrap=True)
        compare_table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, label="Compared")
        compare_plot = gr.Plot(show_label=False)
    timer = gr.Timer(1.0, active=False)

    def model_source(kind: str, name: str, path: str | None) -> tuple[str | None, str | None]:
        if kind == _EXAMPLE:
            return None, name
        if not path:
            raise gr.Error(f"Upload a model ({ACCEPTED}), or pick a built-in example.")
        return path, None

    def inspect(kind: str, name: str, path: str | None, symbols_text: str) -> tuple[str, list[list]]:
        model, example_name = model_source(kind, name, path)
        try:
            values = name_values(symbols_text)
            src = Path(model) if model else example_path(example_name, settings.cache_dir)
            settings.ensure_dirs()
            with tempfile.TemporaryDirectory(prefix="inspect-", dir=settings.cache_dir) as work:
                lim = limits if model else Limits()
                info = inspect_model(prepare_model(src, work, lim), values or None, lim, sha256=file_sha256(src))
        except (ValueError, OSError) as exc:
            raise gr.Error(str(exc)) from None
        described = info.to_dict()
        described["name"] = Path(model).name if model else EXAMPLES[example_name].title
        return inspection_markdown(described), io_rows(described)

    def options_from_form(
        provider_keys, batch_text, n_runs, n_warmup, seed_value, fp16, workspace, symbols_text, image_name,
        resize_mode, scaling_mode, channel_order, labels_text,
    ) -> dict[str, Any]:  # fmt: skip
        options: dict[str, Any] = {
            "providers": list(provider_keys or []),
            "batch_sizes": int_list(batch_text, "batch sizes", minimum=1),
            "symbols": name_values(symbols_text),
            "runs": int(n_runs),
            "warmup": int(n_warmup),
            "seed": int(seed_value),
            "trt_fp16": bool(fp16),
            "trt_workspace_gb": float(workspace),
            "image_input": (image_name or "").strip() or None,
            "image_resize": resize_mode,
            "image_scaling": scaling_mode,
            "image_channels": channel_order,
        }
        if (labels_text or "").strip():
            options["labels"] = int_list(labels_text, "labels")
        return options

    def queue_job(kind, name, path, inputs_path, expected_path, image_paths, *form) -> tuple[Any, ...]:
        model, example_name = model_source(kind, name, path)
        try:
            submission = jobs.submit(
                options_from_form(*form),
                model=model,
                example=example_name,
                inputs_npz=inputs_path,
                expected_npz=expected_path,
                images=list(image_paths or []),
            )
        except (ValueError, OSError, StoreError) as exc:
            raise gr.Error(str(exc)) from None
        state = jobs.status(submission.job.id)
        return submission.job.id, status_markdown(state), gr.Timer(active=True)

    def render(report: dict, job: str) -> tuple[Any, ...]:
        out = Path(settings.outputs_dir) / f"onnx-eval-{job}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        inspected = report.get("inspection")
        return (
            summary_markdown(report),
            result_rows(report),
            latency_figure(report),
            throughput_figure([("", report)]),
            parity_rows(report),
            accuracy_rows(report),
            str(out),
            inspection_markdown(inspected) if inspected else gr.update(),
            io_rows(inspected) if inspected else gr.update(),
        )

    result_outputs = [summary, results, latency_plot, throughput_plot, parity, accuracy, report_file]
    result_outputs += [inspection, io_table]

    def render_job(job: str) -> tuple[Any, ...]:
        return render(jobs.result(job)["report"], job)

    poll = job_poller(jobs.status, status_markdown, render_job, len(result_outputs), "No evaluation yet.")

    def history_rows() -> list[list]:
        rows = []
        for h in jobs.history(100):
            report = jobs.result(h["id"])["report"] if h["status"] == DONE else None
            rows.append(
                [
                    h["id"],
                    h["model_name"],
                    h["status"],
                    ",".join(h["providers"]),
                    h["device"],
                    when(h["created"]),
                    _best_throughput(report),
                    (h["error"] or "")[:160],
                ]
            )
        return rows

    def open_job(text: str) -> tuple[Any, ...]:
        job = job_ids(text)[0]
        return (job, *poll(job))

    def compare(text: str) -> tuple[list[list], Any]:
        done = [(r["id"], r["model_name"], r["report"]) for r in finished_results(jobs.result, text)]
        return compare_rows(done), throughput_figure([(f"{j} {m}", rep) for j, m, rep in done])

    form = [providers, batches, runs, warmup, seed, trt_fp16, trt_workspace, symbols, image_input, resize, scaling]
    form += [channels, labels]
    source.change(
        lambda kind: (gr.update(visible=kind == _EXAMPLE), gr.update(visible=kind == _UPLOAD)),
        source,
        [example, upload],
        queue=False,
        api_visibility="private",
    )
    inspect_btn.click(inspect, [source, example, upload, symbols], [inspection, io_table], api_name="onnx_inspect")
    submit.click(
        queue_job,
        [source, example, upload, inputs_npz, expected_npz, images, *form],
        [job_id, status, timer],
        api_visibility="undocumented",
    )
    timer.tick(poll, [job_id], [status, timer, *result_outputs], queue=False, api_visibility="private")
    refresh.click(history_rows, None, history, queue=False, api_visibility="private")
    open_btn.click(open_job, chosen, [job_id, status, timer, *result_outputs], api_visibility="private")
    compare_btn.click(compare, chosen, [compare_table, compare_plot], api_visibility="private")
    _register_api(jobs)


def _register_api(jobs: OnnxEvalJobs) -> None:
    """The job API for scripts (gradio_client). Submit takes files, so it is an event on hidden components."""
    with gr.Column(visible=False):
        model = gr.File(label="model (.onnx or .zip); leave empty to use `example`")
        example = gr.Textbox(label=f"example: one of {', '.join(EXAMPLES)} when no model is given")
        options = gr.Textbox(label="settings as a JSON object (providers, batch_sizes, runs, ...)", value="{}")
        inputs_npz = gr.File(label="inputs .npz")
        expected_npz = gr.File(label="expected outputs .npz")
        images = gr.File(label="images", file_count="multiple")
        submitted = gr.JSON()
        trigger = gr.Button()

    def onnx_submit(model_path, example_name, options_json, inputs_path, expected_path, image_paths) -> dict:
        try:
            parsed = json.loads(options_json or "{}")
            submission = jobs.submit(
                parsed,
                model=model_path or None,
                example=None if model_path else (example_name or "").strip() or None,
                inputs_npz=inputs_path,
                expected_npz=expected_path,
                images=list(image_paths or []),
            )
        except json.JSONDecodeError as exc:
            raise gr.Error(f"settings are not valid JSON: {exc}") from None
        except (ValueError, OSError, StoreError) as exc:
            raise gr.Error(str(exc)) from None
        return {**jobs.status(submission.job.id), "job_id": submission.job.id}

    trigger.click(
        onnx_submit,
        [model, example, options, inputs_npz, expected_npz, images],
        submitted,
        api_name="onnx_submit",
        api_description="Queue an ONNX evaluation; returns the job id and its status.",
        concurrency_limit=4,
        concurrency_id="onnx_submit",
    )

    def onnx_status(job_id: str) -> dict:
        """State, queue position and progress of one evaluation job."""
        try:
            return jobs.status(job_id)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None

    def onnx_queue() -> list:
        """All queued and running evaluation jobs, in queue order."""
        return jobs.queue()

    def onnx_result(job_id: str) -> dict:
        """The job's status and, once done, its full report (null before)."""
        try:
            return jobs.result(job_id)
        except StoreError as exc:
            raise gr.Error(str(exc)) from None

    gr.api(onnx_status, api_name="onnx_status", queue=False)
    gr.api(onnx_queue, api_name="onnx_queue", queue=False)
    gr.api(onnx_result, api_name="onnx_result", queue=False)
