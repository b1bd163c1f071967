"""The GPU benchmark tab: build a sweep (preset or custom grid), queue it, watch it, read the results and
charts, compare runs and machines, price them, and plan what fits on which GPU (LLM serving too).
Registers the API: /bench_submit, /bench_status, /bench_result, /bench_import, /plan_llm, /plan_network, /cost.

The form starts at the device's defaults (SweepRequest's: batch sizes by device, run counts chosen for the device
when left empty); channels_last and cudnn.benchmark are one choice each (off / on / both), written as the API's
switch lists. Tables show the columns this result filled (the JSON and CSV keep all); empty charts stay hidden.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import date
from pathlib import Path
from typing import Any

import gradio as gr

from engine.bench.catalog import CATALOG, Gpu, PriceBook, detected_gpu, report_gpu
from engine.bench.config import (
    DEFAULT_BATCHES,
    PRECISIONS,
    BenchError,
    CostConfig,
    LlmRequest,
    NetworkPlanConfig,
    RequestSize,
    SweepRequest,
)
from engine.bench.jobs import BenchJobs
from engine.bench.llms import LLMS, parameters_text
from engine.bench.planner import (
    KV_CACHE_DTYPES,
    QUANT_BYTES_PER_PARAM,
    calibration_from_report,
    cost_for,
    cost_table,
    plan_llm,
    plan_network,
    unpriced_cards,
)
from engine.bench.sweep import DEFAULT_RUNS, DEFAULT_WARMUP, PRESETS, math_precision, rows_to_csv
from engine.bench.workloads import BUILTIN
from engine.core.commands import strict_json
from engine.jobs.store import CANCELLED, FAILED
from engine.onnx.timing import auto_help
from engine.runtimes.ort_session import PROVIDERS
from engine.runtimes.registry import COMPILE_MODES, RUNTIMES
from ui.bench_report import (
    COMPARE_HEADERS,
    COST_HEADERS,
    RESULT_HEADERS,
    compare_figure,
    compare_rows,
    cost_notes_markdown,
    cost_rows,
    latency_memory_figure,
    result_rows,
    speedup_figure,
    spread_markdown,
    summary_markdown,
    telemetry_figure,
    throughput_figure,
)
from ui.forms import FormTerms, api_endpoint, api_examples, api_function, in_pane, refusal, reported
from ui.history import wire_history
from ui.jobs import Access, wire_cancel
from ui.style import HIDDEN_WHEN_EMPTY
from ui.widgets import (
    chart,
    delivered,
    finished_results,
    job_ids,
    job_poller,
    markdown_literal,
    optional_number,
    shown_table,
    table,
    when,
)

log = logging.getLogger(__name__)
CUSTOM = "custom grid"
# a switch a sweep may try both ways, as one choice: (what the radio says, the API's switch list)
CHANNELS_LAST_CHOICES = [("off", "off"), ("on", "on"), ("both (off, then on)", "off,on")]
CUDNN_BENCHMARK_CHOICES = [("on", "on"), ("off", "off"), ("both (on, then off)", "on,off")]
API_EXAMPLE_GPU = "H100"  # the card the API page's planner snippets name
HISTORY_HEADERS = ["job", "status", "model", "preset", "configurations", "machine", "submitted", "error"]


def _status_text(s: dict) -> str:
    model = markdown_literal(s["model"])  # an uploaded file's name
    head = f"Sweep `{s['id']}` · **{s['status']}** · {model} · {s['points']} configuration(s) on `{s['device']}`"
    if s["status"] == "queued":
        return f"{head} · position {s['position']}"
    if s["status"] == "running":
        return f"{head} · {s['progress'] * 100:.0f}% · {s['progress_label']}"
    if s["status"] in (FAILED, CANCELLED):
        kept = f"\n\nThe {s['measured']} configuration(s) it finished are below." if s.get("measured") else ""
        return f"{head}\n\n❌ {markdown_literal(s['error'] or '')}{kept}"
    return f"{head} · finished {when(s['finished'])}"


def build_bench_tab(settings: Any, jobs: BenchJobs, access: Access) -> None:
    gpus = jobs.broker.gpus()
    has_gpu = bool(gpus)
    cards: dict[str, Gpu] = dict(CATALOG)
    card_choices: list[tuple[str, str]] = [(key, key) for key in CATALOG]
    here = _this_card(gpus[0]) if has_gpu else None
    if here is not None:
        cards["detected"] = here
        card_choices.insert(0, (f"this machine: {here.name}", "detected"))
    prices_path = settings.prices_path
    gr.Markdown(
        "Sweep batch size × precision × compilation × runtime on our networks or an ONNX model you evaluated, "
        "measured properly (warm-up apart, CUDA events, memory, TFLOP/s against the card's peak, error against "
        "fp32, energy). Weights are random: speed does not depend on trained values. "
        + ("" if has_gpu else "⚠️ No GPU here: sweeps run on the CPU; presets are scaled down and say so.")
    )
    job_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                model = gr.Dropdown(list(BUILTIN), value="wav2lip", label="Model", allow_custom_value=False)
                refresh_models = gr.Button("↻ stored ONNX models", size="sm")
            preset_name = gr.Dropdown([CUSTOM, *PRESETS], value="wav2lip-ladder" if has_gpu else CUSTOM, label="Preset")
            gr.Markdown("\n".join(f"- **{k}**: {v[0]}" for k, v in PRESETS.items()))
            with gr.Group():
                runtimes = gr.CheckboxGroup(list(RUNTIMES), value=["eager"], label="Runtimes (custom grid)")
                precisions = gr.CheckboxGroup(list(PRECISIONS), value=["fp32"], label="Precisions")
                devices = gr.CheckboxGroup(["cpu", "cuda"], value=["cuda" if has_gpu else "cpu"], label="Devices")
                batches = gr.Textbox(
                    value=",".join(map(str, DEFAULT_BATCHES["cuda" if has_gpu else "cpu"])),
                    label="Batch sizes",
                    elem_id="bench-batches",
                )
                with gr.Row():
                    channels_last = gr.Radio(CHANNELS_LAST_CHOICES, value="off", label="channels_last")
                    cudnn = gr.Radio(CUDNN_BENCHMARK_CHOICES, value="on", label="cudnn.benchmark (GPU)")
                    compile_mode = gr.Dropdown(list(COMPILE_MODES), value="default", label="torch.compile mode")
            with gr.Row():
                runs = optional_number(SweepRequest, "runs", "Timed runs", "auto", elem_id="bench-runs",
                                       info=f"empty: {DEFAULT_RUNS}; {auto_help(DEFAULT_RUNS)}")  # fmt: skip
                warmup = optional_number(SweepRequest, "warmup", "Warm-up runs", "auto",
                                         info=f"empty: {DEFAULT_WARMUP}; 1 on a CPU")  # fmt: skip
            with gr.Row():
                submit = gr.Button("Queue sweep", variant="primary", scale=4)
                cancel = gr.Button("Cancel", variant="stop", scale=1)
        with gr.Column(scale=2):
            status = gr.Markdown("No sweep yet.")
            summary = gr.Markdown()
            table_view = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, label="Results", visible=False)
            with gr.Row():  # hidden until a result has something to draw
                speedup_plot = gr.Plot(show_label=False, visible=False)
                throughput_plot = gr.Plot(show_label=False, visible=False)
            with gr.Row():
                memory_plot = gr.Plot(show_label=False, visible=False)
                telemetry_plot = gr.Plot(show_label=False, visible=False)
            spread = gr.Markdown()  # latencies too scattered to trust, beside the charts
            with gr.Row():
                # out of sight until a sweep is shown
                json_file = gr.File(label="Report (JSON)", interactive=False, elem_classes=[HIDDEN_WHEN_EMPTY])
                csv_file = gr.File(label="Results (CSV)", interactive=False, elem_classes=[HIDDEN_WHEN_EMPTY])
    with gr.Accordion("History, compare and import", open=False) as history_panel:
        with gr.Row():
            refresh = gr.Button("Refresh")
            chosen = gr.Textbox(label="Job ids (click a row to add one): Open the first, Compare all")
            open_btn = gr.Button("Open")
            compare_btn = gr.Button("Compare")
            import_file = gr.File(label="Import a report (JSON) from another machine", file_types=[".json"])
        history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False)
        compare_table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, label="Compared")
        compare_plot = gr.Plot(show_label=False, visible=False)
    with gr.Accordion("Cost per request", open=False):
        gr.Markdown(
            "Prices are indicative on-demand hourly rates with their source, in US dollars. Type your provider's "
            "over them and press **Save prices**: they are kept for you alone on this server (other visitors keep "
            "their own), shown here when you come back and used for your cost figures, here and through `/cost`. "
            "A price you change without typing its source is marked as yours. Cards that were not measured get a "
            "compute-scaled estimate. The throughput is the network's alone at full use (inputs already on the GPU; "
            "no copies, decoding, detection or encoding), so a whole request costs more."
        )
        with gr.Row():
            cost_config = gr.Dropdown([], label="Measured configuration (from the results above)")
            per_request = gr.Number(value=1, label="Samples per request (e.g. 250 frames)")
            cpu_price = optional_number(CostConfig, "cpu_price_per_hour", "CPU machine $/hour (CPU rows)",
                                        "empty: not priced",
                                        info="what the machine a CPU configuration ran on costs per hour")  # fmt: skip
            cost_btn = gr.Button("Compute cost")
        prices = gr.Dataframe(
            headers=["GPU", "$/hour", "source"], value=_price_rows(PriceBook.load(prices_path)), interactive=True
        )
        save_prices = gr.Button("Save prices")
        cost_table_view = gr.Dataframe(headers=COST_HEADERS, interactive=False)
        cost_notes = gr.Markdown()  # what the table cannot show: a CPU left unpriced, the cards without a price
    with gr.Accordion("Planner: what fits on which GPU", open=False):
        with gr.Row():
            plan_gpu = gr.Dropdown(card_choices, value="V100-16GB", label="GPU")
            plan_count = gr.Number(value=1, precision=0, label="GPU count")
            plan_llm_name = gr.Dropdown(list(LLMS), value="mistral-7b", label="LLM", allow_custom_value=True,
                                        info="a preset, or type a Hub model id (OWNER/NAME)")  # fmt: skip
            plan_config = gr.File(label="or any model's config.json", file_types=[".json"], height=150)
        with gr.Row():
            plan_quant = gr.Dropdown(["auto", *QUANT_BYTES_PER_PARAM], value="auto", label="Quantize")
            plan_kv = gr.Dropdown(list(KV_CACHE_DTYPES), value="auto", label="KV cache type",
                                  info="auto: the model's 16-bit type; fp8: half the bytes per token")  # fmt: skip
            plan_fraction = gr.Slider(0.1, 1.0, value=0.9, step=0.05, label="CUDA memory fraction")
        with gr.Row():
            plan_total = gr.Number(value=0, precision=0,
                                   label="Max total tokens (0: the model's context, at most 4096)")  # fmt: skip
            plan_input = gr.Number(value=0, precision=0, label="Max input tokens (0: total - 1)")
            plan_concurrent = gr.Number(value=1, precision=0, label="Concurrent requests")
        plan_btn = gr.Button("Plan LLM serving")
        plan_text = gr.Markdown()
        plan_json = gr.JSON(label="Plan")
        gr.Markdown(
            "**Our networks**: weights + activations per sample x batch + the CUDA context under the memory "
            "fraction. With a GPU sweep of that model open above (eager, two or more batch sizes at the precision), "
            "activations are calibrated from its measured peaks; otherwise an upper-bound estimate is used."
        )
        with gr.Row():
            fit_model = gr.Dropdown(list(BUILTIN), value="wav2lip", label="Network")
            fit_precision = gr.Dropdown(list(PRECISIONS), value="fp16", label="Precision")
            fit_target = gr.Number(value=0, label="Target samples/s (0: none)")
            fit_rate = gr.Number(value=0, label="Measured samples/s per GPU (0: none)")
        fit_btn = gr.Button("Plan network memory")
        fit_text = gr.Markdown()
    timer = gr.Timer(1.0, active=False)
    # the engine's messages name these options by flag: here, by their labels
    sweep_terms = FormTerms.of(dict(
        model=model, preset=preset_name, runtime=runtimes, precision=precisions, device=devices, batch=batches,
        channels_last=channels_last, cudnn_benchmark=cudnn, compile_mode=compile_mode, runs=runs, warmup=warmup,
    ))  # fmt: skip
    plan_terms = FormTerms.of(dict(
        gpu=plan_gpu, count=plan_count, llm=plan_llm_name, config=plan_config, quantize=plan_quant,
        kv_cache_dtype=plan_kv, memory_fraction=plan_fraction, max_total_tokens=plan_total,
        max_input_tokens=plan_input, concurrent_requests=plan_concurrent,
    ))  # fmt: skip
    fit_terms = FormTerms.of(dict(
        gpu=plan_gpu, model=fit_model, precision=fit_precision, memory_fraction=plan_fraction,
        target_throughput=fit_target, throughput_per_gpu=fit_rate,
    ))  # fmt: skip

    def status_text(state: dict) -> str:
        return sweep_terms(_status_text(state))

    def sweep_request(model_name, preset_choice, rts, precs, devs, batch_text, cl, cb, mode, n_runs, n_warm) -> Any:
        values = {"model": model_name, "runs": n_runs, "warmup": n_warm}
        if preset_choice != CUSTOM:  # a preset sets its configurations: the grid's widgets do not apply
            return SweepRequest.build({**values, "preset": preset_choice})
        if unticked := [f"“{box.label}”" for box, ticked in ((runtimes, rts), (precisions, precs), (devices, devs))
                        if not ticked]:  # fmt: skip
            # an empty device would be the default device: a grid the form did not show
            raise BenchError(f"nothing is ticked in {' or '.join(unticked)}: tick one or more")
        return SweepRequest.build({
            **values, "runtime": ",".join(rts or []), "precision": ",".join(precs or []),
            "device": ",".join(devs or []), "batch": batch_text, "channels_last": cl or "off",
            "cudnn_benchmark": cb or "on", "compile_mode": mode,
        })  # fmt: skip

    def queue(
        model_name, preset_choice, rts, precs, devs, batch_text, cl, cb, mode, n_runs, n_warm, request: gr.Request
    ) -> tuple[Any, ...]:
        with reported("the sweep", sweep_terms):
            request_ = sweep_request(model_name, preset_choice, rts, precs, devs, batch_text, cl, cb, mode, n_runs,
                                     n_warm)  # fmt: skip
            job = jobs.submit(request_, access.owner(request))
        return job.id, status_text(jobs.status(job.id, access.reader(request))), gr.Timer(active=True)

    def render(job: str, reader: str | None) -> tuple[Any, ...] | None:
        """The sweep's report, or the rows a stopped sweep finished; None where it finished none."""
        result = jobs.result(job, reader)
        report = result["report"]
        if not report:
            return None
        out = Path(settings.outputs_dir)
        (out / f"bench-{job}.json").write_text(strict_json(report) + "\n")  # an fp16 overflow's inf as "Infinity"
        (out / f"bench-{job}.csv").write_text(rows_to_csv(report))
        labels = [r["label"] for r in report["results"] if r.get("samples_per_s")]
        return (
            sweep_terms(summary_markdown(report, result)),
            shown_table(RESULT_HEADERS, result_rows(report)),  # the JSON and CSV keep every column
            chart(speedup_figure(report)),
            chart(throughput_figure(report)),
            chart(latency_memory_figure(report)),
            chart(telemetry_figure(report)),
            spread_markdown(report),
            delivered(out / f"bench-{job}.json"),
            delivered(out / f"bench-{job}.csv"),
            gr.Dropdown(choices=labels, value=labels[0] if labels else None),
        )

    outputs = [summary, table_view, speedup_plot, throughput_plot, memory_plot, telemetry_plot, spread, json_file]
    outputs += [csv_file, cost_config]
    poll = job_poller(jobs.status, status_text, render, len(outputs), "No sweep yet.", access, stopped_too=True)

    def history_rows(request: gr.Request) -> list[list]:
        return [
            [h["id"], h["status"], h.get("model"), h.get("preset") or "custom", h.get("points"), h.get("machine") or "",
             when(h["created"]), (h["error"] or "")[:160]]
            for h in jobs.history(access.reader(request), 100)
        ]  # fmt: skip

    def open_job(text: str, request: gr.Request) -> tuple[Any, ...]:
        job = job_ids(text)[0]
        return (job, *poll(job, request))

    def compare(text: str, request: gr.Request) -> tuple[Any, Any]:
        reader = access.reader(request)
        finished = finished_results(lambda job: jobs.result(job, reader), text)
        done = [(r["id"], r["machine"] or "", r["report"]) for r in finished]
        return table(COMPARE_HEADERS, compare_rows(done)), chart(compare_figure(done))

    def import_report(path: str | None, request: gr.Request) -> list[list]:
        if path:
            with reported("the import"):
                jobs.import_report(Path(path).read_text(), access.owner(request))
        return history_rows(request)

    def prices_of(request: gr.Request) -> tuple[PriceBook, Path]:
        """Each visitor edits their own prices over the operator's; an operator edits the shared file."""
        reader = access.reader(request)
        if reader is None:
            return PriceBook.load(prices_path), prices_path
        own = prices_path.parent / "prices" / f"{hashlib.sha256(reader.encode()).hexdigest()[:16]}.json"
        return PriceBook.load(prices_path, own), own

    def open_report(job: str | None, request: gr.Request, what: str) -> dict[str, Any] | None:
        """The report of the sweep open in this tab (a stopped one's: the configurations it finished); None while
        it has none."""
        if not job:
            return None
        with reported(what):
            return jobs.result(job, access.reader(request)).get("report") or None

    def price_configuration(
        job: str | None, label: str | None, samples: float, cpu_price: str | None, request: gr.Request
    ) -> tuple[list[list], str]:
        """The cost table of one measured configuration, and notes on what it leaves out. A CPU configuration is
        priced at the CPU machine's price where one is given (as `cost --cpu-price-per-hour`)."""
        report = open_report(job, request, "the cost table")
        if report is None or not label:
            raise refusal("Run or open a sweep that finished, then pick one of its configurations.", "the cost table")
        row = next((r for r in report["results"] if r["label"] == label), None)
        if row is None or not row.get("samples_per_s"):
            raise refusal(f"{label} has no throughput in the sweep open in this tab", "the cost table")
        book, precision = prices_of(request)[0], math_precision(row)  # TensorRT's fp32 arithmetic is TF32
        # a GPU configuration whose session fell back to ONNX Runtime's CPU provider measured the CPU, not the card
        on_card = row["device"] == "cuda" and row.get("ran_on") != PROVIDERS["cpu"]
        with reported("the cost table"):
            if on_card:
                samples = RequestSize.build({"samples_per_request": samples}).samples_per_request
                measured_on = report_gpu(report)
                rows = cost_table(row["samples_per_s"], precision, measured_on, book, samples)
            else:  # the CPU price checked as the CLI's and /cost's
                measured_on = None
                config = CostConfig.build({"throughput": row["samples_per_s"], "measured_on": "cpu",
                                           "precision": precision or row["precision"], "samples_per_request": samples,
                                           "cpu_price_per_hour": cpu_price})  # fmt: skip
                rows = cost_for(config, book)
        # cards are estimated from a card's measurement only: pricing one after a CPU's would add a row of dashes
        notes = cost_notes_markdown(rows, unpriced_cards(book, measured_on) if on_card else [], not on_card)
        if not on_card and row["device"] == "cuda":
            notes = f"- ⚠️ {label} fell back to the CPU: it is priced as a CPU measurement\n{notes}"
        return cost_rows(rows), notes

    def own_prices(request: gr.Request) -> list[list]:
        """On the page's load: the visitor's prices (their own over the operator's), which the cost figures use."""
        with reported("the prices"):
            return _price_rows(prices_of(request)[0])

    def save(table_value: Any, request: gr.Request) -> Any:
        rows = _price_table(table_value)
        book, path = prices_of(request)
        shared = path == prices_path
        whose = "set by this server's operator" if shared else "your price"
        mark = f"{whose}, {date.today().isoformat()}"
        prices, sources = _edited_prices(rows, book, mark)
        try:
            book.update(prices, sources)
            # a visitor's file keeps only their changes: the operator's later prices still reach the rest
            book.save(path, None if shared else PriceBook.load(prices_path))
        except (ValueError, OSError) as exc:
            raise refusal(str(exc), "the prices") from None
        gr.Info("Prices saved for everyone" if shared else "Prices saved (yours only)")
        return _price_rows(book)

    def plan_form(
        gpu, count, llm, config, quant, total, max_input, concurrent, fraction, kv
    ) -> tuple[str, dict | None]:
        """The plan, or why there is none in its place (the JSON emptied): not an earlier model's plan under it."""
        # a config.json given is the model planned, whatever the list shows
        values = dict(gpu=gpu, llm=None if config else llm, config=config, count=count, max_total_tokens=total or None,
                      max_input_tokens=max_input or None, concurrent_requests=concurrent, quantize=quant,
                      memory_fraction=fraction, kv_cache_dtype=kv)  # fmt: skip
        try:
            with reported("the LLM plan", plan_terms):
                result = plan_llm(LlmRequest.build(values), card=cards.get(gpu))
        except gr.Error as exc:
            return in_pane(exc), None
        return plan_terms(_plan_markdown(result)), result

    def fit_form(gpu_key, name, precision, fraction, target, rate, job, request: gr.Request) -> str:
        """The network's plan, or why there is none in its place."""
        try:  # a sweep open in this tab that cannot be read (a mistyped id): the estimate, as with none
            report = open_report(job, request, "the network plan") or {}
        except gr.Error:
            report = {}
        # the open sweep calibrates when it measured this network at this precision; else the estimate
        usable = report.get("model", {}).get("name") == name and calibration_from_report(report, precision)
        values = dict(gpu=gpu_key, model=name, precision=precision, memory_fraction=fraction,
                      target_throughput=target or None, throughput_per_gpu=rate or None)  # fmt: skip
        try:
            with reported("the network plan", fit_terms):
                config = NetworkPlanConfig.build(values)
                title, fit = plan_network(config, settings.cache_dir, report if usable else None, cards.get(gpu_key))
        except gr.Error as exc:
            return in_pane(exc)
        gpu = cards[gpu_key]
        lines = [
            f"**{markdown_literal(title)}** on {gpu.name} at {precision} ({fit.basis}): fixed "
            f"{fit.weights_bytes / 2**20:.0f} MiB, {fit.activation_bytes_per_sample / 2**20:.1f} MiB per sample, "
            f"CUDA context {fit.overhead_bytes / 2**20:.0f} MiB",
            f"- largest batch under {fraction:g} of {gpu.memory_bytes / 1e9:.1f} GB (the card's total as CUDA reports "
            f"it): **{fit.max_batch_text}**; recommended "
            f"**{fit.recommended_batch}** (predicted {fit.predicted_bytes / 2**30:.2f} GiB); recommended precision "
            f"**{fit.recommended_precision}**",
        ]
        if fit.gpus_for_target:
            lines.append(f"- GPUs for {target:g} samples/s at {rate:g} per GPU: **{fit.gpus_for_target}**")
        return fit_terms("\n".join(lines + [f"- ⚠️ {w}" for w in fit.warnings]))

    form = [
        model,
        preset_name,
        runtimes,
        precisions,
        devices,
        batches,
        channels_last,
        cudnn,
        compile_mode,
        runs,
        warmup,
    ]

    def models(request: gr.Request) -> Any:
        return gr.Dropdown(choices=[*BUILTIN, *jobs.stored_onnx_models(access.reader(request))])

    refresh_models.click(models, None, model, api_visibility="private")
    submit.click(queue, form, [job_id, status, timer], api_visibility="private")
    wire_cancel(cancel, jobs, access, job_id)
    timer.tick(poll, [job_id], [status, timer, *outputs], queue=False, api_visibility="private")
    wire_history(history_panel, refresh, history, chosen, history_rows)  # listed when opened; a row gives its id
    # one progress display per action: on the pane that answers it, not on every output
    open_btn.click(open_job, chosen, [job_id, status, timer, *outputs], api_visibility="private",
                   show_progress_on=status)  # fmt: skip
    compare_btn.click(compare, chosen, [compare_table, compare_plot], api_visibility="private",
                      show_progress_on=compare_table)  # fmt: skip
    import_file.upload(import_report, import_file, history, api_visibility="private")
    cost_btn.click(price_configuration, [job_id, cost_config, per_request, cpu_price], [cost_table_view, cost_notes],
                   api_visibility="private", show_progress_on=cost_table_view)  # fmt: skip
    save_prices.click(save, prices, prices, api_visibility="private")
    # no triggers and no inputs: the page's load (each visitor's own prices, not the ones the page was built with)
    gr.on(None, own_prices, None, prices, queue=False, show_progress="hidden", api_visibility="private")
    plan_inputs = [plan_gpu, plan_count, plan_llm_name, plan_config, plan_quant, plan_total, plan_input]
    plan_inputs += [plan_concurrent, plan_fraction, plan_kv]
    plan_btn.click(plan_form, plan_inputs, [plan_text, plan_json], api_visibility="private",
                   show_progress_on=plan_text)  # fmt: skip
    # the model chosen last is planned: an uploaded config.json was planned whatever was picked in the list after it
    # (picked from the list, or typed; not `input`, which Gradio 6.31 sends on every blur, a mere click in and out)
    gr.on([plan_llm_name.select, plan_llm_name.change], _no_file, None, plan_config, queue=False,
          show_progress="hidden", api_visibility="private")  # fmt: skip
    fit_inputs = [plan_gpu, fit_model, fit_precision, plan_fraction, fit_target, fit_rate, job_id]
    fit_btn.click(fit_form, fit_inputs, fit_text, api_visibility="private")
    _register_api(jobs, settings, prices_of, cards, access)


def _this_card(device: str) -> Gpu | None:
    """The first GPU as this process's PyTorch sees it; None for another node's card (a Ray key "NODE/cuda:0") or
    one only declared to Ray, which crashed the app's start-up here."""
    import torch

    from engine.jobs.zerogpu import on_zerogpu

    if on_zerogpu():  # `spaces` makes torch here name a card it has not attached (ZEROGPU_CARD): none to describe
        return None
    if not re.fullmatch(r"cuda:\d+", device) or not torch.cuda.is_available():
        return None
    try:
        props = torch.cuda.get_device_properties(device)
    except (RuntimeError, AssertionError) as exc:  # a key past this process's devices
        log.warning("the GPU %s cannot be described here: %s", device, exc)
        return None
    return detected_gpu(props.name, int(props.total_memory), (props.major, props.minor))


def _no_file() -> None:
    """An upload box emptied: the user chose something else in its place."""
    return None


def _price_rows(book: PriceBook) -> list[list]:
    return [[key, book.prices.get(key, ""), book.sources.get(key, "")] for key in CATALOG]


def _price_table(table_value: Any) -> list[list]:
    """The price table's rows (GPU, dollars per hour, source), as a pandas frame or plain lists."""
    values = table_value.values.tolist() if hasattr(table_value, "values") else table_value
    if not isinstance(values, list) or not all(isinstance(r, list) and len(r) == 3 for r in values):
        raise refusal("the price table has three columns: GPU, dollars per hour, source", "the prices")
    return values


def _edited_prices(rows: list[list], book: PriceBook, mark: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The rows that change `book`: (prices, sources) for PriceBook.update. A price changed under the source it
    had gets `mark` (whose price it now is: the old source described the old price); a source typed is kept."""
    prices: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for gpu, price, source in rows:
        key = str(gpu)
        try:
            value = None if price in ("", None) else float(price)
        except (TypeError, ValueError):
            raise refusal(f"the price of {key} must be dollars per hour, a number; got {price!r:.40}",
                          "the prices") from None  # fmt: skip
        typed = "" if source is None else str(source).strip()
        before = book.sources.get(key, "")
        if value == book.prices.get(key) and typed == before:
            continue
        prices[key], sources[key] = value, typed if typed and typed != before else mark
    return prices, sources


def _plan_markdown(result: dict) -> str:
    verdict = "✅ fits" if result["fits"] else "❌ does not fit"
    m = result["memory"]
    parts = ", ".join(f"{k.removesuffix('_bytes').replace('_', ' ')} {v / 1e9:.2f} GB" for k, v in m["per_gpu"].items())
    model = markdown_literal(result["model"]["name"] or result["model"]["key"])  # a config's own name
    lines = [
        f"**{model}** on {m['shards']} × {result['gpu']['name']}"
        + (f", {result['replicas']} replicas" if result["replicas"] > 1 else "")
        + f": {verdict}",
        f"- per GPU: {parts}",
        f"- KV cache {m['kv_bytes_per_token'] / 1024:.0f} KiB per token; room for {m['kv_token_capacity']:,} tokens "
        f"({m['kv_tokens_needed']:,} needed)",
        f"- parameters: {parameters_text(result['model']['parameters'])}, {result['model']['parameters_basis']}",
        f"- `{result['launch']}`",
    ]
    lines += [f"- why: {r}" for r in result["reasons"]]
    lines += [f"- ⚠️ {w}" for w in result["warnings"]]
    return "\n".join(lines)


def _register_api(jobs: BenchJobs, settings: Any, prices_of: Any, cards: dict[str, Gpu], access: Access) -> None:
    """The API: every parameter is a field of the capability's config, named as the CLI's flags."""

    def bench_submit(values: dict[str, Any], request: gr.Request | None) -> dict:
        job = jobs.submit(SweepRequest.build(values), access.owner(request))
        return {**jobs.status(job.id, access.reader(request)), "job_id": job.id}

    def bench_status(job_id: str, request: gr.Request) -> dict:
        """State, queue position and progress of one of your sweeps."""
        with reported("the sweep status"):
            return jobs.status(job_id, access.reader(request))

    def bench_result(job_id: str, request: gr.Request) -> dict:
        """One of your sweeps' status and, once done, its full report (machine, per-configuration metrics)."""
        with reported("the sweep result"):
            return jobs.result(job_id, access.reader(request))

    def bench_import(report_json: str, request: gr.Request) -> dict:
        """Store a report exported on another machine, for comparison; returns its job summary."""
        with reported("the import"):
            return jobs.status(jobs.import_report(report_json, access.owner(request)).id, access.reader(request))

    def plan_network_api(values: dict[str, Any], progress: Any, request: gr.Request | None) -> dict:
        config = NetworkPlanConfig.build(values)
        title, fit = plan_network(config, settings.cache_dir, card=cards.get(config.gpu))
        return {"model": title, **fit.to_dict()}

    def plan_llm_api(values: dict[str, Any], progress: Any, request: gr.Request | None) -> dict:
        config = LlmRequest.build(values)
        return plan_llm(config, card=cards.get(config.gpu))

    with gr.Column(visible=False):  # their names on the API page
        network_plan = gr.JSON(label="plan")
        llm_plan = gr.JSON(label="LLM plan")
    # the API page's snippets name a card and a model, so that they run as shown (not Gradio's gpu="Hello!!")
    about = "Batch size and GPU count for one of our networks (parameters as `avatarbench plan network`)."
    with api_examples(gpu=API_EXAMPLE_GPU):
        api_endpoint(NetworkPlanConfig, plan_network_api, network_plan, "plan_network", about)
    # an endpoint with inputs, not gr.api: a config.json comes as an upload
    about = "LLM serving plan (parameters as `avatarbench plan llm`): fits?, memory by part, TGI flags."
    with api_examples(gpu=API_EXAMPLE_GPU, llm="mistral-7b"):
        api_endpoint(LlmRequest, plan_llm_api, llm_plan, "plan_llm", about, queue=False)
    submit = api_function(SweepRequest, bench_submit, "the sweep")
    submit.__doc__ = "Queue a sweep (parameters as `avatarbench bench`); returns its status and job id."
    cost = api_function(
        CostConfig, lambda values, request: cost_for(CostConfig.build(values), prices_of(request)[0]), "the cost table"
    )
    cost.__doc__ = "Cost per 1000 requests on each priced GPU, at your prices (parameters as `avatarbench cost`)."
    gr.api(submit, api_name="bench_submit", concurrency_limit=4, concurrency_id="bench_submit")
    gr.api(bench_status, api_name="bench_status", queue=False)
    gr.api(bench_result, api_name="bench_result", queue=False)
    # queued: each call parses up to 8 MiB of JSON in this process
    gr.api(bench_import, api_name="bench_import", concurrency_limit=2, concurrency_id="bench_import")
    gr.api(cost, api_name="cost", queue=False)
