"""The ONNX eval tab: pick a built-in model or upload one, inspect it, queue an evaluation, watch it, read
and compare results. Also registers the job API: /onnx_submit, /onnx_status, /onnx_queue, /onnx_result.

Evaluations are jobs (engine.onnx.jobs), not requests: the button only queues one, and a timer polls
its status until it finishes, so a closed tab loses nothing and the history can reopen any result.

The built-in example is exported on first use (a few seconds of PyTorch on a CPU, 90% of a first Inspect): the
page's load starts that export, so the first Inspect or evaluation finds it made. Empty run counts are chosen
for the device (engine/onnx/timing.py); the batch sizes start small without a GPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from engine.jobs.store import CANCELLED, DONE, FAILED
from engine.onnx.config import DEFAULT_RUNS, DEFAULT_WARMUP, EvalConfig, InspectConfig
from engine.onnx.examples import EXAMPLES, example_path
from engine.onnx.jobs import OnnxEvalJobs
from engine.onnx.prepare import ACCEPTED
from engine.onnx.timing import auto_help
from engine.onnx.uploads import display_name, model_source, prepared
from engine.runtimes.ort_session import PROVIDERS
from ui.forms import FormTerms, api_endpoint, choices, default, reported
from ui.history import wire_history
from ui.jobs import Access, wire_cancel
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
    spread_markdown,
    summary_markdown,
    throughput_figure,
)
from ui.style import HIDDEN_WHEN_EMPTY
from ui.widgets import (
    chart,
    delivered,
    finished_results,
    job_ids,
    job_poller,
    markdown_literal,
    number,
    optional_number,
    shown_table,
    table,
    when,
)

log = logging.getLogger(__name__)
HISTORY_HEADERS = ["job", "model", "status", "providers", "device", "submitted", "best samples/s", "error"]
_EXAMPLE = "Built-in example"
_UPLOAD = "Upload"
_DEFAULT_EXAMPLE = "wav2lip"
BATCHES_GPU, BATCHES_CPU = "1,8", "1,4"  # the form's batch sizes: small without a GPU (a CPU answer in seconds)


def _provider_choices() -> list[tuple[str, str]]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [(key if name in available else f"{key} (not in this onnxruntime)", key) for key, name in PROVIDERS.items()]


def status_markdown(status: dict) -> str:
    state = status["status"]
    head = f"Job `{status['id']}` · **{state}** · {markdown_literal(status['model_name'])} on `{status['device']}`"
    if state == "queued":
        return f"{head} · position {status['position']} in the `{status['device']}` queue"
    if state == "running":
        return f"{head} · {status['progress'] * 100:.0f}% · {status['progress_label']}"
    if state in (FAILED, CANCELLED):
        kept = f"\n\nThe {status['measured']} result row(s) it finished are below." if status.get("measured") else ""
        return f"{head}\n\n❌ {markdown_literal(status['error'] or '')}{kept}"
    took = (status["finished"] or 0) - (status["started"] or status["finished"] or 0)
    return f"{head} · finished {when(status['finished'])} in {took:.1f}s"


def _best_throughput(report: dict | None) -> Any:
    values = [r["samples_per_s"] for r in (report or {}).get("results", []) if r.get("samples_per_s")]
    return round(max(values), 1) if values else ""


def build_onnx_eval_tab(settings: Any, jobs: OnnxEvalJobs, access: Access) -> None:
    """Render the tab in the current Blocks context and register the job API endpoints."""
    has_gpu = bool(jobs.broker.gpus())
    gr.Markdown(
        "Evaluate any ONNX model on every execution provider: latency percentiles, throughput, speed-up over "
        "the CPU, parity between providers and accuracy on your data. Each evaluation is a queued job; results "
        f"are kept. Accepted: {ACCEPTED}. The built-in examples are exports of our own networks with random "
        "weights (made on first use, no download)."
    )
    c = EvalConfig
    job_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio([_EXAMPLE, _UPLOAD], value=_EXAMPLE, label="Model")
            example = gr.Dropdown(
                [(e.title, e.name) for e in EXAMPLES.values()], value=_DEFAULT_EXAMPLE, label="Built-in example"
            )
            upload = gr.File(
                label="ONNX model (.onnx, or .zip with external data)", file_types=[".onnx", ".zip"], visible=False
            )
            symbols = gr.Textbox(label="Symbolic dimensions other than the batch (NAME=VALUE, comma-separated)")
            inspect_btn = gr.Button("Inspect")
            providers = gr.CheckboxGroup(_provider_choices(), value=["cpu"], label="Execution providers")
            with gr.Row():
                batch_sizes = gr.Textbox(
                    value=BATCHES_GPU if has_gpu else BATCHES_CPU, label="Batch sizes (when the batch is free)"
                )
                runs = optional_number(
                    c, "runs", "Timed runs", "auto", info=f"empty: {DEFAULT_RUNS}; {auto_help(DEFAULT_RUNS)}"
                )
                warmup = optional_number(
                    c, "warmup", "Warm-up runs", "auto", info=f"empty: {DEFAULT_WARMUP}; 1 on a CPU"
                )
                seed = number(c, "seed", "Seed")
            with gr.Accordion("TensorRT", open=False), gr.Row():
                trt_fp16 = gr.Checkbox(value=default(c, "trt_fp16"), label="Allow fp16 engines")
                trt_workspace_gb = number(c, "trt_workspace_gb", "Workspace (GiB)")
            with gr.Accordion("Your data (default: seeded synthetic inputs)", open=False):
                inputs = gr.File(label="Inputs .npz (arrays keyed by input name)", file_types=[".npz"])
                expected = gr.File(
                    label="Expected outputs .npz (keyed by output name; any of them)", file_types=[".npz"]
                )
                images = gr.File(label="Images for an image input", file_count="multiple", file_types=["image"])
                with gr.Row():
                    image_input = gr.Textbox(label="Image input name (empty: the first image-shaped input)")
                    image_resize = gr.Dropdown(choices(c, "image_resize"), value=default(c, "image_resize"),
                                               label="Resize")  # fmt: skip
                    image_scaling = gr.Dropdown(choices(c, "image_scaling"), value=default(c, "image_scaling"),
                                                label="Scaling")  # fmt: skip
                    image_channels = gr.Radio(choices(c, "image_channels"), value=default(c, "image_channels"),
                                              label="Channel order")  # fmt: skip
                with gr.Row():
                    labels = gr.Textbox(label="Class labels, one per sample of the first batch (top-1/top-5)",
                                        scale=3)  # fmt: skip
                    labels_output = gr.Textbox(label="Output they score (empty: the first float one of rank 2+)")
            with gr.Row():
                submit = gr.Button("Queue evaluation", variant="primary", scale=4)
                cancel = gr.Button("Cancel", variant="stop", scale=1)
        with gr.Column(scale=2):
            status = gr.Markdown("No evaluation yet.")
            with gr.Accordion("Inspection", open=True):
                inspection = gr.Markdown()
                io_table = gr.Dataframe(headers=IO_HEADERS, interactive=False, wrap=True, visible=False)
            summary = gr.Markdown()
            results = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, label="Results", visible=False)
            with gr.Row():  # hidden until a result has something to draw
                latency_plot = gr.Plot(show_label=False, visible=False)
                throughput_plot = gr.Plot(show_label=False, visible=False)
            spread = gr.Markdown()  # latencies too scattered to trust, beside the charts
            parity = gr.Dataframe(
                headers=PARITY_HEADERS, interactive=False, label="Parity against CPU fp32", visible=False
            )
            accuracy = gr.Dataframe(
                headers=ACCURACY_HEADERS, interactive=False, label="Accuracy on your data", visible=False
            )
            report_file = gr.File(label="Full report (JSON)", interactive=False, elem_classes=[HIDDEN_WHEN_EMPTY])
    with gr.Accordion("History and compare", open=False) as history_panel:
        with gr.Row():
            refresh = gr.Button("Refresh")
            chosen = gr.Textbox(label="Job ids (click a row to add one): Open the first, Compare all")
            open_btn = gr.Button("Open")
            compare_btn = gr.Button("Compare")
        history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, wrap=True)
        compare_table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, label="Compared")
        compare_plot = gr.Plot(show_label=False, visible=False)
    timer = gr.Timer(1.0, active=False)
    # the engine's messages name these options by flag: here, by their labels
    terms = FormTerms.of(dict(
        model=upload, example=example, symbols=symbols, providers=providers, inputs=inputs, expected=expected,
        images=images, batch_sizes=batch_sizes, runs=runs, warmup=warmup, seed=seed, trt_fp16=trt_fp16,
        trt_workspace_gb=trt_workspace_gb, image_input=image_input, image_resize=image_resize,
        image_scaling=image_scaling, image_channels=image_channels, labels=labels, labels_output=labels_output,
    ))  # fmt: skip

    def status_text(state: dict) -> str:
        return terms(status_markdown(state))

    def chosen_model(kind: str, name: str, path: str | None) -> dict[str, Any]:
        return {"model": None, "example": name} if kind == _EXAMPLE else {"model": path, "example": None}

    def inspect(
        kind: str, name: str, path: str | None, symbols_text: str, progress: gr.Progress = gr.Progress()
    ) -> tuple[str, Any]:
        progress(0.0, desc="preparing the model (a built-in example is exported on its first use)")
        with reported("ONNX inspection", terms):
            described, rows = inspected(
                InspectConfig.build({**chosen_model(kind, name, path), "symbols": symbols_text})
            )
        return terms(described), gr.update(value=rows, visible=True)

    def export_default_example() -> None:
        """On page load: make the default example's export (a no-op once it exists) before anyone asks for it."""
        try:
            example_path(_DEFAULT_EXAMPLE, settings.cache_dir)
        except Exception:  # the Inspect that needs it reports the problem to the user
            log.exception("exporting the built-in example %s failed", _DEFAULT_EXAMPLE)

    def inspected(config: InspectConfig) -> tuple[str, list[list]]:
        source = model_source(config.model, config.example, settings)
        with prepared(source, settings, dict(config.symbols)) as (_, info):
            described = {**info.to_dict(), "name": display_name(source)}
        return inspection_markdown(described), io_rows(described)

    def queue_job(
        kind, name, path, provider_keys, inputs, expected, images, batch_sizes, runs, warmup, seed, trt_fp16,
        trt_workspace_gb, symbols, image_input, image_resize, image_scaling, image_channels, labels, labels_output,
        request: gr.Request,
    ) -> tuple[Any, ...]:  # fmt: skip
        values = dict(
            inputs=inputs, expected=expected, images=images, batch_sizes=batch_sizes, runs=runs, warmup=warmup,
            seed=seed, trt_fp16=trt_fp16, trt_workspace_gb=trt_workspace_gb, symbols=symbols, image_input=image_input,
            image_resize=image_resize, image_scaling=image_scaling, image_channels=image_channels, labels=labels,
            labels_output=labels_output, providers=",".join(provider_keys or []), **chosen_model(kind, name, path),
        )  # fmt: skip
        with reported("ONNX evaluation", terms):
            submission = jobs.submit(EvalConfig.build(values), access.owner(request))
        state = jobs.status(submission.job.id, access.reader(request))
        return submission.job.id, status_text(state), gr.Timer(active=True)

    def render(report: dict, job: str) -> tuple[Any, ...]:
        out = Path(settings.outputs_dir) / f"onnx-eval-{job}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        inspected = report.get("inspection")
        return (
            terms(summary_markdown(report)),
            shown_table(RESULT_HEADERS, result_rows(report)),  # the JSON file keeps every column
            chart(latency_figure(report)),
            chart(throughput_figure([("", report)])),
            spread_markdown(report),
            shown_table(PARITY_HEADERS, parity_rows(report)),
            shown_table(ACCURACY_HEADERS, accuracy_rows(report)),
            delivered(out),
            terms(inspection_markdown(inspected)) if inspected else gr.update(),
            gr.update(value=io_rows(inspected), visible=True) if inspected else gr.update(),
        )

    result_outputs = [summary, results, latency_plot, throughput_plot, spread, parity, accuracy, report_file]
    result_outputs += [inspection, io_table]

    def render_job(job: str, reader: str | None) -> tuple[Any, ...] | None:
        """The evaluation's report, or what a stopped one finished; None where it finished nothing."""
        report = jobs.result(job, reader)["report"]
        return render(report, job) if report else None

    # kept=2: the inspection, which its own button fills, and which a failed job keeps
    poll = job_poller(jobs.status, status_text, render_job, len(result_outputs), "No evaluation yet.", access,
                      kept=2, stopped_too=True)  # fmt: skip

    def history_rows(request: gr.Request) -> list[list]:
        rows, reader = [], access.reader(request)
        for h in jobs.history(reader, 100):
            report = jobs.result(h["id"], reader)["report"] if h["status"] == DONE else None
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

    def open_job(text: str, request: gr.Request) -> tuple[Any, ...]:
        job = job_ids(text)[0]
        return (job, *poll(job, request))

    def compare(text: str, request: gr.Request) -> tuple[list[list], Any]:
        reader = access.reader(request)
        finished = finished_results(lambda job: jobs.result(job, reader), text)
        done = [(r["id"], r["model_name"], r["report"]) for r in finished]
        return table(COMPARE_HEADERS, compare_rows(done)), chart(
            throughput_figure([(f"{j} {m}", r) for j, m, r in done])
        )

    form = [inputs, expected, images, batch_sizes, runs, warmup, seed, trt_fp16, trt_workspace_gb, symbols, image_input]
    form += [image_resize, image_scaling, image_channels, labels, labels_output]
    source.change(
        lambda kind: (gr.update(visible=kind == _EXAMPLE), gr.update(visible=kind == _UPLOAD)),
        source,
        [example, upload],
        queue=False,
        api_visibility="private",
    )
    inspect_btn.click(
        inspect, [source, example, upload, symbols], [inspection, io_table], api_visibility="private",
        show_progress_on=inspection,
    )  # fmt: skip
    # no triggers and no inputs: the page's load
    gr.on(None, export_default_example, show_progress="hidden", api_visibility="private", concurrency_id="onnx_export")
    submit.click(
        queue_job, [source, example, upload, providers, *form], [job_id, status, timer], api_visibility="private"
    )
    wire_cancel(cancel, jobs, access, job_id)
    timer.tick(poll, [job_id], [status, timer, *result_outputs], queue=False, api_visibility="private")
    wire_history(history_panel, refresh, history, chosen, history_rows)  # listed when opened; a row gives its id
    # one progress display per action: on the pane that answers it, not on every output
    open_btn.click(open_job, chosen, [job_id, status, timer, *result_outputs], api_visibility="private",
                   show_progress_on=status)  # fmt: skip
    compare_btn.click(compare, chosen, [compare_table, compare_plot], api_visibility="private",
                      show_progress_on=compare_table)  # fmt: skip
    _register_api(jobs, inspected, access)


def _register_api(jobs: OnnxEvalJobs, inspected: Any, access: Access) -> None:
    """The job API for scripts (gradio_client): its parameters are EvalConfig's and InspectConfig's fields, the
    same names and defaults as `avatarbench onnx eval` and `onnx inspect`."""
    with gr.Column(visible=False):
        # the labels are the outputs' names on the API page
        submitted, description = gr.JSON(label="job"), gr.Markdown(label="description")
        table = gr.Dataframe(headers=IO_HEADERS, label="inputs and outputs")

    def onnx_submit(values: dict[str, Any], progress: Any, request: gr.Request | None) -> dict:
        submission = jobs.submit(EvalConfig.build(values), access.owner(request))
        return {**jobs.status(submission.job.id, access.reader(request)), "job_id": submission.job.id}

    api_endpoint(
        EvalConfig, onnx_submit, submitted, "onnx_submit",
        "Queue an ONNX evaluation (parameters as `avatarbench onnx eval`); returns the job id and its status.",
        concurrency_limit=4, concurrency_id="onnx_submit",
    )  # fmt: skip
    api_endpoint(
        InspectConfig, lambda values, _, request: inspected(InspectConfig.build(values)), [description, table],
        "onnx_inspect", "Validate and describe a model (parameters as `avatarbench onnx inspect`).",
    )  # fmt: skip

    def onnx_status(job_id: str, request: gr.Request) -> dict:
        """State, queue position and progress of one of your evaluation jobs."""
        with reported("ONNX job status"):
            return jobs.status(job_id, access.reader(request))

    def onnx_queue(request: gr.Request) -> list:
        """Your queued and running evaluation jobs, in queue order (positions count everyone's)."""
        with reported("the ONNX queue"):
            return jobs.queue(access.reader(request))

    def onnx_result(job_id: str, request: gr.Request) -> dict:
        """One of your jobs' status and, once done, its full report (null before)."""
        with reported("ONNX job result"):
            return jobs.result(job_id, access.reader(request))

    gr.api(onnx_status, api_name="onnx_status", queue=False)
    gr.api(onnx_queue, api_name="onnx_queue", queue=False)
    gr.api(onnx_result, api_name="onnx_result", queue=False)
