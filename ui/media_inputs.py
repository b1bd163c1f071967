"""Media inputs with previews for the Lip-sync and Portrait tabs: one config field fed by one of several inputs
shown as tabs (a face photo or video; speech from a file, the microphone or a video's sound track; a driving video,
image or motion template), an image input whose uploads our engine checks rather than Gradio's PIL, and the row
of the engine picker, the tab's main button and Cancel.

The tabs' previews are presentation only: the API endpoints take plain files (ui/forms.py), and every upload is
checked by the engine, with its own messages, when the job is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine.core.options import Config
from ui.forms import default, field

# Pixels for each photo preview: as tall as an empty gr.Audio or gr.Video (whose upload area has a fixed minimum,
# and whose height setting would cut off their source buttons), so the inputs line up.
MEDIA_HEIGHT = 280
TAB_BAR_HEIGHT = 42  # what a media choice's tab bar adds above its preview (an input beside it matches the height)


RAW_UPLOAD = "raw-upload"  # the CSS class marking the images whose uploads reach the engine unread


def checked_image(**kwargs: Any) -> gr.Image:
    """A gr.Image (preview, webcam, clipboard) that hands the uploaded file on as it is. Gradio's own Image opens
    every upload with PIL first, so a broken or oversized file would fail there with a bare "Error"; the engine
    checks the header (size, pixel count) and decodes it itself, with its own message.

    The mark is a CSS class because it must survive Gradio rebuilding the component from its constructor
    arguments, which it does for every session whose event sends the component an update (an instance attribute
    was lost then); a subclass would make Gradio write a .pyi stub beside this module."""
    given = kwargs.pop("elem_classes", None) or []
    classes = [*([given] if isinstance(given, str) else given), RAW_UPLOAD]
    return gr.Image(type="filepath", elem_classes=classes, **kwargs)


def _raw_upload_preprocess(image: gr.Image, payload: Any) -> Any:
    """gr.Image.preprocess, except that a marked image's uploaded file is handed on unread (an image pasted or
    captured inline still goes through Gradio, which writes it to a file)."""
    marked = RAW_UPLOAD in (image.elem_classes or [])
    if marked and payload is not None and not (payload.url and payload.url.startswith("data:")):
        return str(payload.path)
    return _GRADIO_IMAGE_PREPROCESS(image, payload)


_GRADIO_IMAGE_PREPROCESS = getattr(gr.Image.preprocess, "gradio_original", gr.Image.preprocess)
_raw_upload_preprocess.gradio_original = _GRADIO_IMAGE_PREPROCESS  # type: ignore[attr-defined]
gr.Image.preprocess = _raw_upload_preprocess  # type: ignore[method-assign,assignment]


@dataclass
class MediaChoice:
    """One config field fed by one of several inputs, each in its own tab (`inputs`: tab label -> component). The
    last input given wins: setting one clears the others and shows its tab, so the tab shows what will run."""

    field: str
    inputs: dict[str, Any]
    tabs: gr.Tabs

    def names(self) -> dict[str, str]:
        """The handler parameter standing for each input."""
        return {label: f"{self.field}__{label.lower().replace(' ', '_')}" for label in self.inputs}

    def wire(self) -> None:
        """Setting one input clears the others and selects its tab (browser-side events, not in the API)."""
        components = list(self.inputs.values())
        for index, component in enumerate(components):
            others = [c for c in components if c is not component]

            def keep_one(value: Any, index: int = index, count: int = len(others)) -> tuple[Any, ...]:
                if value is None:
                    return (gr.update(), *(gr.update() for _ in range(count)))
                return (gr.Tabs(selected=index), *(None for _ in range(count)))

            component.change(keep_one, component, [self.tabs, *others], queue=False, api_visibility="private")

    def kwargs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """A handler's `inputs_kwargs` with this field's one component replaced by all of the choice's inputs."""
        out: dict[str, Any] = {}
        for name, component in inputs.items():
            if name == self.field:
                out.update({self.names()[label]: c for label, c in self.inputs.items()})
            else:
                out[name] = component
        return out

    def handler(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler` (a ui.forms.form_handler) taking the choice's inputs in place of the field: the one given (the
        first, should several be) becomes the field's value."""
        signature = inspect.signature(handler)
        names = list(self.names().values())
        params: list[inspect.Parameter] = []
        for p in signature.parameters.values():
            if p.name in ("progress", "request"):  # what Gradio fills in, found by default and annotation
                params.append(p)
            elif p.name == self.field:
                params += [p.replace(name=n, default=inspect.Parameter.empty) for n in names]
            else:  # the tab always sends every input: no defaults (a private event, not on the API page)
                params.append(p.replace(default=inspect.Parameter.empty))
        combined = signature.replace(parameters=params)

        def call(*args: Any, **kwargs: Any) -> Any:
            values = dict(combined.bind(*args, **kwargs).arguments)
            given = [values.pop(n, None) for n in names]
            values[self.field] = next((v for v in given if v is not None), None)
            return handler(**values)

        if inspect.isgeneratorfunction(handler):  # Gradio streams a generator's outputs: this must be one too

            def chosen(*args: Any, **kwargs: Any) -> Any:
                yield from call(*args, **kwargs)

        else:
            chosen = call

        chosen.__signature__ = combined  # type: ignore[attr-defined]
        chosen.__annotations__ = {p.name: p.annotation for p in params if p.name != "progress"}
        return chosen


def media_choice(field: str, inputs: dict[str, Callable[[], Any]], selected: int = 0) -> MediaChoice:
    """Build the tabs (call in the place they go): `inputs` maps each tab's label to a function making its input."""
    made: dict[str, Any] = {}
    with gr.Tabs(selected=selected) as tabs:
        for index, (label, make) in enumerate(inputs.items()):
            with gr.Tab(label, id=index):
                made[label] = make()
    choice = MediaChoice(field, made, tabs)
    choice.wire()
    return choice


def engine_picker(cls: type[Config]) -> gr.Dropdown:
    """The config's `engine` as a compact dropdown beside the run button, each choice reading "Engine: NAME"."""
    f = field(cls, "engine")
    return gr.Dropdown(
        [(f"Engine: {name}", name) for name in f.option.choices], value=default(cls, "engine"), label="Engine",
        show_label=False, container=False, scale=2, min_width=150,
    )  # fmt: skip


def action_row(cls: type[Config], label: str) -> tuple[gr.Dropdown, gr.Button, gr.Button]:
    """One row under a tab's inputs: the engine, the tab's main button (`label`) and Cancel."""
    with gr.Row(equal_height=True):
        engine = engine_picker(cls)
        run = gr.Button(label, variant="primary", scale=3)
        cancel = gr.Button("Cancel", variant="stop", scale=1)
    return engine, run, cancel


__all__ = [
    "MEDIA_HEIGHT",
    "TAB_BAR_HEIGHT",
    "MediaChoice",
    "action_row",
    "checked_image",
    "engine_picker",
    "media_choice",
]
