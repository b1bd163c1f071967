"""Jobs as the web app shows them: whose they are, following one to its end, and the API every kind shares.

Every job belongs to whoever submitted it: the login where the app has one (`--auth`), else the browser (a random
token the page keeps in a cookie, so a reload or a second tab still sees its jobs), else the session (a
`gradio_client.Client` is one session; a request with none of the three is refused). Every read and change names
that owner, through every route, the raw `fn_index` events included; another owner's job is "no job". Operators
(`--operator NAME`, a login; `--operator '*'` makes every visitor one, for a personal machine) see all, and only
they may name server paths or downloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine.core.errors import AvatarbenchError, InputError
from engine.core.hls import LiveStream
from engine.core.options import Config
from engine.core.settings import Settings
from engine.core.weights import server_files
from engine.jobs.kinds import JobKind, queue_view, readable_summary, shown_report
from engine.jobs.store import CANCELLED, DONE, FAILED, FINISHED, Job, JobStore, StoreError
from ui.forms import FormTerms, Run, api_endpoint, refusal, reported
from ui.widgets import delivered, joined_video, markdown_literal, scroll_into_view, when
from ui.zerogpu import remember_visitor_token

log = logging.getLogger(__name__)
LOCAL = "local"  # the owner of calls that come with no request (tests, scripts calling handlers directly)


SERVER_FILE_FIELDS = ("checkpoint", "detector_checkpoint", "weights", "landmarks", "musetalk_weights")  # server files
EVERYONE = "*"  # `--operator '*'`: every visitor is an operator (a personal machine)
OWNER_COOKIE = "avatarbench_owner"
_OWNER_TOKEN = re.compile(r"[0-9a-f]{32,128}")
# In the page's <head>, so it runs before the page sends any event: the browser's owner token, made once and kept
# for a year (renewed on each visit). It is a secret like a session id: random, never shown; the server keeps only
# its hash. Over https the cookie is also sent from a frame on another site (a Space on huggingface.co), partitioned
# to that site; over plain http (a local machine) it stays first-party.
OWNER_COOKIE_SCRIPT = f"""<script>(() => {{
  const name = "{OWNER_COOKIE}";
  const held = (document.cookie.split("; ").find((c) => c.startsWith(name + "=")) || "").slice(name.length + 1);
  const token = /^{_OWNER_TOKEN.pattern}$/.test(held) ? held
    : Array.from(crypto.getRandomValues(new Uint8Array(24)), (b) => b.toString(16).padStart(2, "0")).join("");
  const where = location.protocol === "https:" ? "; SameSite=None; Secure; Partitioned" : "; SameSite=Lax";
  document.cookie = `${{name}}=${{token}}; Path=/; Max-Age=31536000${{where}}`;
}})();</script>"""


@dataclass(frozen=True)
class Access:
    operators: frozenset[str] = frozenset()

    def owner(self, request: gr.Request | None) -> str:
        """Who a new job belongs to. On ZeroGPU this also keeps, in memory, the visitor's X-IP-Token for that owner's
        GPU calls (ui/zerogpu.py), which the job thread makes outside any request."""
        owner = self._owner(request)
        remember_visitor_token(owner, request)
        return owner

    def _owner(self, request: gr.Request | None) -> str:
        if request is None:
            return LOCAL
        if request.username:
            return f"user:{request.username}"
        token = str((getattr(request, "cookies", None) or {}).get(OWNER_COOKIE) or "")
        if _OWNER_TOKEN.fullmatch(token):  # kept as a hash: an operator reading the store cannot act as the browser
            return f"browser:{_digest(token)}"
        if not request.session_hash:  # a bare REST call: all such callers would share one owner and its jobs
            raise InputError(
                "this server tells its users apart by their session: send a session_hash with the request "
                f"(gradio_client does) or an {OWNER_COOKIE} cookie, or ask the operator for a login (--auth)"
            )
        return f"session:{_digest(request.session_hash)}"  # a hash too: anyone may send a session_hash

    def is_operator(self, request: gr.Request | None) -> bool:
        return EVERYONE in self.operators or bool(request and request.username and request.username in self.operators)

    def reader(self, request: gr.Request | None) -> str | None:
        """Whose jobs a request may read: its own, or everyone's (None) for an operator."""
        return None if self.is_operator(request) else self.owner(request)

    def server_files(self, values: dict[str, Any], settings: Settings, request: gr.Request | None) -> dict[str, Any]:
        """A visitor picks model files among the ones this server has (by their name under the weights folder);
        only an operator may name a path or an hf: download. Otherwise a visitor could probe the server's files
        ("does not exist" against "could not read") or make it download anything from the Hub."""
        if self.is_operator(request):
            return values
        found = server_files(settings)
        out = dict(values)
        for name in SERVER_FILE_FIELDS:
            choice = str(values.get(name) or "").strip()
            if not choice:
                continue
            if choice not in found:
                have = ", ".join(found) or "none yet: the operator puts them in the weights folder"
                raise InputError(f"{name.replace('_', ' ')}: choose one of the weights this server has ({have}); "
                                 "paths and downloads are for the operator")  # fmt: skip
            out[name] = str(found[choice])
        return out


def _digest(secret: str) -> str:
    """What the store keeps of an owner's secret (a browser's token, a session id): whoever reads the store, or a
    copy of it, cannot send it back to act as that owner."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def _report(status: dict[str, Any], progress: Callable[[float, str], None]) -> None:
    if status["status"] == "queued":
        ahead, running, where = status["ahead"], status.get("running", 0), f"queued on {status['device']}"
        if ahead:
            progress(0.0, f"{where}: {ahead} job(s) ahead")
        else:
            progress(0.0, f"{where}: next, after {running} running job(s)" if running else "starting")
    else:
        progress(status["progress"], status["progress_label"] or "running")


WAITS_PER_OWNER = 4  # one person's handlers waiting on jobs at once, over every tab, Open button and API route


class Waits:
    """Handlers that wait on a job (a run button, Open, /lipsync, /portrait, /job_stream) hold one of their
    route's shared slots until it ends: one browser with 16 tabs held them all, and another person's finished job
    waited behind them for as long as the first's ran. Each owner may hold WAITS_PER_OWNER; past it, a wait is
    refused before anything is queued."""

    def __init__(self, limit: int = WAITS_PER_OWNER) -> None:
        self.limit, self.lock, self.held = limit, threading.Lock(), Counter[str]()

    @contextlib.contextmanager
    def waiting(self, owner: str) -> Iterator[None]:
        with self.lock:
            if self.held[owner] >= self.limit:
                raise InputError(
                    f"you are already waiting on {self.limit} jobs (other tabs, Open buttons or API calls): wait for "
                    "one to end, or queue with /lipsync_submit or /portrait_submit and poll /job_status"
                )
            self.held[owner] += 1
        try:
            yield
        finally:
            with self.lock:
                self.held[owner] -= 1
                if not self.held[owner]:
                    del self.held[owner]


WAITS = Waits()


class JobEnded(AvatarbenchError):
    """A followed job that ended without its result (failed or cancelled). The API raises it, as "job <id> <status>:
    <reason>"; a tab shows it in its panes instead (`Ended`), where it stays."""

    def __init__(self, job_id: str, status: str, reason: str | None) -> None:
        self.job_id, self.status, self.reason = job_id, status, reason or "no reason recorded"
        super().__init__(f"job {job_id} {status}: {self.reason}")


@dataclass(frozen=True)
class Ended:
    """What a tab shows for a job with no result to render: one that failed or was cancelled (why, its record, and
    the video it streamed before it stopped, while that is kept), or an id that names none of yours (`status`
    None). A toast fades in seconds; this stays in the panes, and replaces whatever an earlier job left there."""

    job_id: str
    status: str | None
    reason: str
    video: str | None = None  # the video made before it stopped, as a component returns it
    seconds: float = 0.0
    record: dict[str, Any] | None = None  # the job's status (its inputs, device, times, error) for the JSON pane

    def summary(self, terms: Callable[[str], str] = str) -> str:
        """The summary pane's text: the outcome in words, neutral for a cancel, and the reason as written (in the
        form's `terms`)."""
        reason = markdown_literal(terms(self.reason))
        if self.status is None:
            return f"✗ {reason}"
        headline = "**Cancelled**" if self.status == CANCELLED else f"**✗ {self.status.capitalize()}**"
        made = f"\n\nThe first {self.seconds:.1f} s it made before it stopped are above." if self.video else ""
        return f"{headline} · job `{self.job_id}` · {reason}{made}"


def stopped(jobs: JobKind, ended: JobEnded, reader: str | None) -> Ended:
    """A job that ended without its result, as a tab shows it: the video it streamed before it stopped is joined
    from its segments (a cancelled or failed job keeps no MP4; its stream is kept for a while after it ends)."""
    video, seconds = None, 0.0
    stream = jobs.live(ended.job_id, reader) if hasattr(jobs, "live") else None
    if stream is not None and stream.segments:
        try:
            video, seconds = delivered(joined_video(stream)), stream.duration
        except Exception:  # a stream cut off mid-write: the reason still shows
            log.warning("job %s: the video it made before it stopped cannot be joined", ended.job_id, exc_info=True)
    record = None
    with contextlib.suppress(AvatarbenchError):
        record = jobs.status(ended.job_id, reader)
    return Ended(ended.job_id, ended.status, ended.reason, video, seconds, record)


def follow(
    jobs: JobKind, job_id: str, owner: str | None, progress: Callable[[float, str], None], poll_s: float = 0.2
) -> dict[str, Any]:
    """Wait for a job, reporting its queue place and progress; its result when done, else its reason raised."""
    while True:
        status = jobs.status(job_id, owner)
        if status["status"] in FINISHED:
            break
        _report(status, progress)
        time.sleep(poll_s)
    if status["status"] != DONE:
        raise JobEnded(job_id, status["status"], status["error"])
    return jobs.result(job_id, owner)["report"]


def follow_live(
    jobs: JobKind, job_id: str, owner: str | None, progress: Callable[[float, str], None], poll_s: float = 0.2
) -> Iterator[LiveStream | dict[str, Any]]:
    """`follow` for a job writing a live stream: each time more of it is finished, the stream so far; at the end
    the job's result (its reason raised when it did not finish)."""
    shown = 0
    while True:
        status = jobs.status(job_id, owner)
        live = jobs.live(job_id, owner)
        if len(live.segments) > shown:
            shown = len(live.segments)
            yield live
        if status["status"] in FINISHED:
            break
        _report(status, progress)
        time.sleep(poll_s)
    final = jobs.live(job_id, owner)  # what the last poll missed
    if len(final.segments) > shown:
        yield final
    if status["status"] != DONE:
        raise JobEnded(job_id, status["status"], status["error"])
    yield jobs.result(job_id, owner)["report"]


def register_job_api(store: JobStore, kinds: Mapping[str, JobKind], access: Access) -> None:
    """/job_status, /job_result, /job_cancel, /job_queue and /job_history for every kind, owner-checked."""

    def kind_of(job_id: str, request: gr.Request | None) -> JobKind:
        return kinds[store.get(job_id, access.reader(request)).kind]

    def job_status(job_id: str, request: gr.Request) -> dict:
        """State of one of your jobs: queued (with the jobs ahead), running (progress), done, failed, cancelled."""
        with reported("the job status"):
            return kind_of(job_id, request).status(job_id, access.reader(request))

    def job_result(job_id: str, request: gr.Request) -> dict:
        """One of your jobs with its full result once done (for lip-sync and portrait: outputs by name, stages,
        figures; /job_files hands over the files)."""
        with reported("the job result"):
            return _shown(kind_of(job_id, request).result(job_id, access.reader(request)))

    def job_files(job_id: str, request: gr.Request) -> list[str]:
        """The files one of your finished lip-sync or portrait jobs made (its video; a portrait's strip and motion
        template where asked for), downloaded by the client."""
        with reported("the job's files"):
            files = kind_of(job_id, request).output_files(job_id, access.reader(request))
            return [path for path in map(delivered, files.values()) if path is not None]

    def job_cancel(job_id: str, request: gr.Request) -> dict:
        """Cancel one of your jobs: a queued one never starts; a running one is stopped with its worker."""
        with reported("the cancel"):
            return kind_of(job_id, request).cancel(job_id, access.reader(request))

    def job_queue(request: gr.Request) -> dict:
        """Your queued and running jobs, and how many of other people's are queued and running."""
        with reported("the queue"):
            return queue_view(store, access.reader(request))

    def job_history(limit: int = 50, request: gr.Request = None) -> list[dict]:  # type: ignore[assignment]
        """Your jobs of every kind and status, newest first (at most `limit`, 1..500): where a script that lost a
        job's id (a dropped connection to /lipsync or /portrait) finds it and its result."""
        with reported("the job history"):
            if isinstance(limit, float) and limit.is_integer():  # a JSON number some clients send as 2.0
                limit = int(limit)
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
                raise InputError(f"limit must be a whole number in 1..500, got {limit!r:.40}")
            jobs = store.history(limit, owner=access.reader(request))
            return [readable_summary(kinds.get(job.kind), job) for job in jobs]

    def job_stream(job_id: str, request: gr.Request) -> Iterator[tuple[list[str], dict]]:
        """Follow one of your lip-sync or portrait jobs submitted with stream=true: each time more of its video is
        made, the new MPEG-TS segments (one second each, H.264 + AAC, in order: played or joined one after another
        they are the video) and the job's status; last, its status with the full result."""
        with reported("the job stream"), WAITS.waiting(access.owner(request)):
            jobs = kind_of(job_id, request)
            if not hasattr(jobs, "live"):
                raise InputError(f"job {job_id} is a {jobs.kind} job: only lip-sync and portrait jobs stream video")
            sent = 0
            for seen in follow_live(jobs, job_id, access.reader(request), lambda fraction, label: None):
                if isinstance(seen, LiveStream):
                    new = [delivered(p) for p in seen.segments[sent:]]
                    sent = len(seen.segments)
                    yield new, jobs.status(job_id, access.reader(request))
            yield [], _shown(jobs.result(job_id, access.reader(request)))

    gr.api(job_status, api_name="job_status", queue=False)
    gr.api(job_result, api_name="job_result", queue=False)
    gr.api(job_cancel, api_name="job_cancel", queue=False)
    gr.api(job_queue, api_name="job_queue", queue=False)
    gr.api(job_history, api_name="job_history", queue=False)
    with gr.Column(visible=False):
        stream_id, stream_button = gr.Textbox(label="job_id"), gr.Button()
        # labelled: an output's name on the API page (else "value_647"), as the README's snippets name them
        segments, stream_status = gr.File(file_count="multiple", label="segments"), gr.JSON(label="status")
    stream_button.click(job_stream, stream_id, [segments, stream_status], api_name="job_stream",
                        concurrency_limit=16, concurrency_id="job_stream")  # fmt: skip
    with gr.Column(visible=False):
        files_id, files_button = gr.Textbox(label="job_id"), gr.Button()
        files = gr.File(file_count="multiple", label="files")
    files_button.click(job_files, files_id, files, api_name="job_files", queue=False)


def _shown(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "report": shown_report(result.get("report"))}


def job_endpoints(
    cls: type[Config],
    jobs: JobKind,
    access: Access,
    render: Callable[[dict[str, Any], Callable[[str], str]], tuple[Any, ...]],
    outputs: list[Any],
    name: str,
    about: str,
    live: Callable[[LiveStream], tuple[Any, ...]],
    ended: Callable[[Ended, Callable[[str], str]], tuple[Any, ...]],
    terms: Callable[[str], str] = str,
) -> Run:
    """`/name` (submit, wait, the outputs: the video so far (`live`) each time it has doubled while the job streams
    (stream=true), then its result) and `/name_submit` (queue, return the job's status and id for /job_status and
    /job_result). Returns the tab's button handler: the same outputs, except that a job that failed or was cancelled
    is shown in the panes (`ended`: why, and the video it made before it stopped) instead of raised, so the reason
    stays on the page and a cancel is not an error. /name still raises it: scripts tell the two apart by that. The
    tab's toasts, `render` and `ended` say it in the form's `terms`; the API's `render` and `ended` name its
    parameters."""
    api_terms = FormTerms.api(cls)

    def queued(values: dict[str, Any], request: gr.Request | None) -> Job:
        config = cls.build(access.server_files(values, jobs.settings, request))
        return jobs.submit(config, access.owner(request))

    def shown(
        job: Job, progress: Callable[[float, str], None], reader: str | None, say: Callable[[str], str]
    ) -> Iterator[tuple[Any, ...]]:
        """The outputs as the job goes: its video so far each time it has doubled, then its result in `say`'s terms
        (JobEnded raised when it ends without one)."""
        previewed = 0.0
        for seen in follow_live(jobs, job.id, reader, progress):
            if not isinstance(seen, LiveStream):
                yield render(seen, say)
            elif not seen.ended and seen.duration >= 2 * previewed:
                previewed = seen.duration
                try:
                    update = live(seen)
                except Exception:  # a preview that cannot be made must not cost the result: the next may work
                    log.warning("job %s: its video so far could not be shown", job.id, exc_info=True)
                    continue
                yield update

    def run(values: dict[str, Any], progress: Callable[[float, str], None], request: gr.Request | None) -> Any:
        """The API's: a job that ends without its result raises its reason, once the panes that showed its video so
        far stop promising the rest."""
        with WAITS.waiting(access.owner(request)):
            job, reader, updates = queued(values, request), access.reader(request), 0
            try:
                for update in shown(job, progress, reader, api_terms):
                    updates += 1
                    yield update
            except JobEnded as exc:
                if updates:
                    with contextlib.suppress(Exception):
                        yield ended(stopped(jobs, exc, reader), api_terms)
                raise

    def run_in_tab(values: dict[str, Any], progress: Callable[[float, str], None], request: gr.Request | None) -> Any:
        """The tab's: a job that ends without its result is shown, not raised (a failure is also said in a toast);
        so is a request refused before a job exists (bad input, a full queue), whose reason was a toast that faded
        over a bare "Error" badge, with an earlier job's result still in the panes."""
        with WAITS.waiting(access.owner(request)):
            try:
                job, reader = queued(values, request), access.reader(request)
            except AvatarbenchError as exc:
                log.info("%s refused: %s", name, exc)
                gr.Warning(terms(str(exc)))
                yield ended(Ended("", None, str(exc)), terms)
                return
            try:
                yield from shown(job, progress, reader, terms)
            except JobEnded as exc:
                log.info("%s job %s %s: %s", name, job.id, exc.status, exc.reason)
                if exc.status == FAILED:
                    gr.Warning(terms(str(exc)))
                yield ended(stopped(jobs, exc, reader), terms)

    def submit(values: dict[str, Any], progress: Callable[[float, str], None], request: gr.Request | None) -> dict:
        job = queued(values, request)
        return {**jobs.status(job.id, access.reader(request)), "job_id": job.id}

    waiting = {"concurrency_id": name, "concurrency_limit": 16}  # handlers only wait: the workers do the work
    about += " With stream=true, the video made so far shows while the rest is made (/job_stream: its segments)."
    api_endpoint(cls, run, outputs, name, f"{about} Waits for the result (/{name}_submit queues it instead).",
                 **waiting)  # fmt: skip
    with gr.Column(visible=False):
        submitted = gr.JSON(label="job")  # its name on the API page
    api_endpoint(cls, submit, submitted, f"{name}_submit", f"Queue it: {about} Returns the job id and its status.")
    return run_in_tab


def wire_cancel(button: gr.Button, jobs: JobKind, access: Access, job_id: Any) -> None:
    """A tab's Cancel button for the job it shows (`job_id`: the tab's gr.State)."""

    def cancel(job: str | None, request: gr.Request) -> None:
        if not job:
            raise refusal("No job to cancel yet.", "the cancel")
        with reported("the cancel"):
            state = jobs.cancel(job, access.reader(request))
        gr.Info(f"job {job} is {state['status']}")

    button.click(cancel, job_id, None, api_visibility="private")


def cancel_own(jobs: JobKind, access: Access, request: gr.Request | None) -> list[str]:
    """Cancel the requester's queued and running jobs of this kind; returns their ids. Only their own, operator or
    not: an operator's reader is everyone, and a Cancel button stopped every user's jobs."""
    owner = access.owner(request)
    return [jobs.cancel(s["id"], owner)["id"] for s in jobs.queue(owner)]


HISTORY_HEADERS = ["job", "status", "inputs", "device", "submitted", "error"]


def run_panel(
    jobs: JobKind,
    access: Access,
    render: Callable[[dict[str, Any]], tuple[Any, ...]],
    ended: Callable[[Ended], tuple[Any, ...]],
    outputs: list[Any],
    cancel: gr.Button,
) -> None:
    """Wires a tab's Cancel button (your queued or running jobs of this kind) and lists your earlier runs here (when
    the list is opened or refreshed; a row clicked gives its id), any of which reopens into the tab's `outputs`
    through `render(result)` (one still queued or running once it is done), or `ended` for one that failed or was
    cancelled, or an id that names none of yours: every pane then shows that job, never the last one's results.
    Progress shows once, on `outputs[0]` (the main result), not on every output pane: the tab's own run button should
    say the same (show_progress_on)."""
    with gr.Accordion("Your earlier runs", open=False) as panel:
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm")
            chosen = gr.Textbox(label="Job id", scale=3)
            open_button = gr.Button("Open", size="sm")
        table = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, wrap=True)

    def cancel_mine(request: gr.Request) -> None:
        stopped = cancel_own(jobs, access, request)
        gr.Info(f"cancelled {', '.join(stopped)}" if stopped else "nothing of yours is queued or running")

    def rows(request: gr.Request) -> list[list[Any]]:
        inputs = [name for name in getattr(jobs, "files", ())]
        return [
            [h["id"], h["status"], ", ".join(str(h.get(n, "")) for n in inputs), h["device"], when(h["created"]),
             (h["error"] or "")[:160]]
            for h in jobs.history(access.reader(request), 100)
        ]  # fmt: skip

    def reopen(text: str, request: gr.Request, progress: Any = gr.Progress()) -> tuple[Any, ...]:
        """A finished run's result; a queued or running one (started before a reload, say) followed to its end."""
        job = str(text or "").replace(",", " ").split()
        if not job:  # nothing to open: the panes keep what they show
            gr.Warning("Give a job id: click a row of the list, or type one.")
            return tuple(gr.update() for _ in outputs)
        with reported("reopening a run"), WAITS.waiting(access.owner(request)):
            reader = access.reader(request)
            try:
                return render(follow(jobs, job[0], reader, lambda part, label: progress(part, desc=label)))
            except JobEnded as exc:
                return ended(stopped(jobs, exc, reader))
            except StoreError as exc:  # no job of yours (or of another tab's kind): its panes say so, emptied
                log.info("reopening a run refused: %s", exc)
                return ended(Ended(job[0], None, str(exc)))

    def pick(selected: gr.SelectData) -> str:
        return str((selected.row_value or [""])[0])

    cancel.click(cancel_mine, None, None, queue=False, api_visibility="private")
    for event in (refresh.click, panel.expand):  # the list is current when it is opened, not only on Refresh
        event(rows, None, table, queue=False, api_visibility="private")
    table.select(pick, None, chosen, queue=False, api_visibility="private")  # a row clicked: its id, ready to open
    # It may wait for a job for minutes: like the run buttons' handlers, many wait at once, beside other events.
    open_button.click(reopen, chosen, outputs, api_visibility="private", show_progress_on=outputs[0],
                      concurrency_id=f"{jobs.kind}_reopen", concurrency_limit=16)  # fmt: skip
    scroll_into_view(open_button, outputs[0])


__all__ = [
    "HISTORY_HEADERS",
    "LOCAL",
    "Access",
    "Ended",
    "JobEnded",
    "cancel_own",
    "follow",
    "follow_live",
    "job_endpoints",
    "register_job_api",
    "run_panel",
    "stopped",
    "wire_cancel",
]
