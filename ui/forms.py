"""Forms made from capability configs, and how their errors reach the user.

A capability's API parameters are its config's fields (engine/core/options.py): the same names, defaults and checks
as the CLI flags. `form_handler` gives an event handler exactly those parameters, so Gradio's API page and
`gradio_client` show them (a call with only the required files works). `api_endpoint` registers a capability's API
on invisible components made from the config, so Gradio's own range checks never pre-empt ours and the tab's visible
form stays free to present the fields as it likes; `api_function` does the same for `gr.api`. The API page's
snippets show each parameter's default, and for the files the examples that `api_examples` names, so that they run
as shown. `reported` turns our errors into their message and anything else into "internal error <id>", the
traceback going to the server log.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import PurePosixPath
from typing import Any

import gradio as gr

from engine.core.errors import AvatarbenchError
from engine.core.options import Config, Field, fields

log = logging.getLogger("avatarbench.ui")
Progress = Callable[[float, str], None]
Run = Callable[[dict[str, Any], Progress, "gr.Request | None"], Any]


def refusal(message: str, what: str = "the request") -> gr.Error:
    """An expected refusal ("give a job id first"): shown as it is, one line in the server log. Gradio prints a
    traceback for every gr.Error unless told not to (print_exception), which buried the log in expected errors."""
    log.info("%s refused: %s", what, message)
    return gr.Error(message, print_exception=False)


def in_pane(refused: gr.Error) -> str:
    """A refusal as the pane that answers the request shows it ("✗ reason"), beside its toast: the toast alone
    faded and left the pane's last answer, to another request, looking like the answer to this one."""
    gr.Warning(refused.message)
    return f"✗ {refused.message}"


@contextlib.contextmanager
def reported(what: str, terms: Callable[[str], str] = str) -> Iterator[None]:
    """Our errors become their one-line message (one line in the server log too), in the form's `terms`; a bug
    becomes a short message with an id that the server log holds beside the traceback (never a traceback in the
    page)."""
    try:
        yield
    except gr.Error as exc:
        if exc.print_exception:  # a gr.Error raised directly in the block: a refusal, one line as well
            log.info("%s refused: %s", what, exc.message)
            exc.print_exception = False
        raise
    except AvatarbenchError as exc:
        raise refusal(terms(str(exc)), what) from None
    except Exception as exc:
        error_id = uuid.uuid4().hex[:8]
        log.exception("internal error %s in %s", error_id, what)  # the bug's traceback, once
        message = f"internal error in {what} ({type(exc).__name__}; id {error_id} in the server log)"
        raise gr.Error(message, print_exception=False) from None


_FLAG = re.compile(r"(upstream's )?(?<![\w-])--(no-)?([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")
_TICK = re.compile(r"(?<!\\)`")  # a code span's edge; "\\`" is a backtick written as markdown text
_NOTE = re.compile(r"\s*\([^()]*\)$")  # a label's closing note: "Batch size (empty: auto)"


class FormTerms:
    """The engine's messages are written for the CLI: they name options by flag (`--fps`, `--no-smooth`). A web
    form names them by its labels, so a tab shows each of its own flags as the label of the field it fills in
    ("“Smooth face boxes” off"); other flags (upstream's, a command in backticks, one the form lacks) stay as
    written. The API's terms are its parameter names."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = dict(labels)  # field name -> what the surface calls it

    @classmethod
    def of(cls, components: Mapping[str, Any]) -> FormTerms:
        """The terms of a form: its components' labels (field name -> component), without a closing note."""
        return cls({
            name: _NOTE.sub("", label)
            for name, component in components.items()
            if isinstance(label := getattr(component, "label", None), str) and label
        })  # fmt: skip

    @classmethod
    def api(cls, config: type[Config]) -> FormTerms:
        """The terms of a config's API endpoint: its parameters' names."""
        return cls({f.name: f.name for f in fields(config)})

    def __call__(self, text: str) -> str:
        if not self.labels:
            return text
        parts = _TICK.split(text)  # odd parts are quoted commands: they run as written
        return "`".join(part if i % 2 else _FLAG.sub(self._label, part) for i, part in enumerate(parts))

    def _label(self, flag: re.Match[str]) -> str:
        upstream, negated, name = flag.groups()
        label = self.labels.get(name.replace("-", "_"))
        if upstream or label is None:
            return flag.group(0)
        return f"“{label}” off" if negated else f"“{label}”"


def field(cls: type[Config], name: str) -> Field:
    return next(f for f in fields(cls) if f.name == name)


def default(cls: type[Config], name: str) -> Any:
    """A component's initial value: the field's default as the API writes it (None for a required file)."""
    f = field(cls, name)
    return None if f.required else f.text_of(f.default)


def choices(cls: type[Config], name: str) -> list[Any]:
    return list(field(cls, name).option.choices)


def _api_type(f: Field) -> Any:
    base = {bool: bool, int: int, float: float}.get(f.type, str) if f.option.text is None else str
    if f.option.many:
        base = list[str]
    return base | None if f.optional or f.option.file else base


def _signature(cls: type[Config], names: list[str], with_progress: bool) -> inspect.Signature:
    by_name = {f.name: f for f in fields(cls)}
    params = []
    for name in names:
        f = by_name[name]
        value = inspect.Parameter.empty if f.required else f.text_of(f.default)
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value,
                                        annotation=_api_type(f)))  # fmt: skip
    if with_progress:
        params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    # Gradio fills a gr.Request parameter itself (the caller's login or session: whose job this is).
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                    annotation=gr.Request))  # fmt: skip
    return inspect.Signature(params, return_annotation=Any)  # one output (gr.api counts the annotation's)


def _named(
    run: Callable[..., Any], signature: inspect.Signature, what: str, terms: Callable[[str], str] = str
) -> Callable[..., Any]:
    with_progress = "progress" in signature.parameters

    def call(*args: Any, **kwargs: Any) -> Any:
        values = dict(signature.bind(*args, **kwargs).arguments)
        progress = values.pop("progress", None)  # what Gradio injects; absent when called directly
        request = values.pop("request", None)
        if not with_progress:
            return run(values, request)
        if progress is None:
            return run(values, lambda fraction, label: None, request)
        return run(values, lambda fraction, label: progress(fraction, desc=label), request)

    if inspect.isgeneratorfunction(run):  # Gradio streams a generator's outputs: the handler must be one too

        def handler(*args: Any, **kwargs: Any) -> Any:
            with reported(what, terms):
                yield from call(*args, **kwargs)

    else:

        def handler(*args: Any, **kwargs: Any) -> Any:
            with reported(what, terms):
                return call(*args, **kwargs)

    handler.__doc__ = run.__doc__
    handler.__signature__ = signature  # type: ignore[attr-defined]
    handler.__annotations__ = {p.name: p.annotation for p in signature.parameters.values() if p.name != "progress"}
    return handler


def form_handler(
    cls: type[Config], components: Mapping[str, Any], run: Run, what: str, terms: FormTerms | None = None
) -> Callable[..., Any]:
    """An event handler for `.click(handler, inputs_kwargs=components)` whose parameters are the config's fields
    named in `components` (in that order), with their defaults; `run(values, progress, request)` gets them as a dict
    (feed it to cls.build), a progress callback that drives gr.Progress, and the request (whose job it is). Its
    refusals name the options by the components' labels unless `terms` says otherwise."""
    signature = _signature(cls, list(components), with_progress=True)
    return _named(run, signature, what, terms or FormTerms.of(components))


def api_function(
    cls: type[Config], run: Callable[[dict[str, Any], gr.Request | None], Any], what: str
) -> Callable[..., Any]:
    """A function for `gr.api` whose typed parameters are all the config's fields, with their defaults;
    `run(values, request)`."""
    return _named(run, _signature(cls, [f.name for f in fields(cls)], with_progress=False), what)


_API_EXAMPLES: ContextVar[Mapping[str, Any] | None] = ContextVar("api_examples", default=None)
_NONE = object()  # no example of our own: the component keeps Gradio's


@contextlib.contextmanager
def api_examples(**values: Any) -> Iterator[None]:
    """Examples for the API page of the endpoints registered inside (`api_endpoint`, so ui/jobs.py job_endpoints
    too): a file field's as a path relative to the repository, which its snippet passes to `handle_file` (it runs
    from a checkout, where the assets are), any other field's as the API takes it. Unnamed fields show their
    default; Gradio's own placeholders (a PDF from the web for every file, "Hello!!" for text) never run."""
    token = _API_EXAMPLES.set({**(_API_EXAMPLES.get() or {}), **values})
    try:
        yield
    finally:
        _API_EXAMPLES.reset(token)


def _file_data(path: str) -> dict[str, Any]:
    """A file as the API page's snippets write it: `handle_file('<path>')`."""
    return {"path": path, "url": path, "orig_name": PurePosixPath(path).name, "meta": {"_type": "gradio.FileData"}}


def api_example(f: Field, given: Mapping[str, Any], shown: Any) -> Any:
    """The value the API page shows for a field: the example given, else the default as the page shows it
    (`shown`: the component's value), else a required field's first choice."""
    if f.name in given:
        value = given[f.name]
        if not f.option.file:
            return value
        files = [_file_data(str(p)) for p in (value if isinstance(value, list | tuple) else [value])]
        return files if f.option.many else files[0]
    if not f.required:
        return shown
    if f.option.choices:
        return f.text_of(f.option.choices[0])
    return _NONE


def _showing(component: Any, example: Any) -> Any:
    """The component, with `example` as what Gradio's API page (its snippets, its OpenAPI examples) shows."""
    if example is not _NONE:
        component.example_payload = component.example_value = lambda: example
    return component


def _as_sent(payload: Any) -> Any:
    """An API-only endpoint's number, as sent: the config's checks say what was wrong and what is accepted (Gradio's
    own rounding fails on NaN, infinity or text with no message at all). Set on the instance: a subclass of a Gradio
    component makes Gradio write a .pyi stub beside this module."""
    return payload


def hidden_inputs(cls: type[Config], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Invisible components, one per field (files as uploads), for an API-only endpoint. Call inside a hidden
    column."""
    out: dict[str, Any] = {}
    examples = _API_EXAMPLES.get() or {}
    for f in fields(cls):
        if f.name in skip:
            continue
        value, label = default(cls, f.name), f"{f.name}: {f.option.help}"
        if f.option.file:
            component = gr.File(label=label, file_count="multiple" if f.option.many else "single")
        elif f.type is bool and f.option.text is None:
            component = gr.Checkbox(value=value, label=label)
        elif f.type in (int, float) and f.option.text is None:
            component = gr.Number(value=value, label=label, precision=0 if f.type is int else None)
            component.preprocess = _as_sent  # type: ignore[method-assign]
        else:  # a required field has no value: the API page then lists it as required
            component = gr.Textbox(value=value if value is not None or f.required else "", label=label)
        out[f.name] = _showing(component, api_example(f, examples, component.value))
    return out


def api_endpoint(
    cls: type[Config],
    run: Run,
    outputs: Any,
    api_name: str,
    description: str,
    **event: Any,
) -> None:
    """The `/api_name` endpoint: one invisible input per config field, feeding `run(values, progress, request)`;
    its refusals name the options as its parameters."""
    with gr.Column(visible=False):
        inputs = hidden_inputs(cls)
        trigger = gr.Button()
    handler = form_handler(cls, inputs, run, api_name, FormTerms.api(cls))
    trigger.click(
        handler, inputs_kwargs=inputs, outputs=outputs, api_name=api_name, api_description=description, **event
    )


__all__ = [
    "FormTerms",
    "api_endpoint",
    "api_example",
    "api_examples",
    "api_function",
    "choices",
    "default",
    "field",
    "form_handler",
    "hidden_inputs",
    "in_pane",
    "refusal",
    "reported",
]
