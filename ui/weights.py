"""The "Get weights" panel a tab places beside its model pickers: one engine's official files from the Hugging Face
Hub into this server's weights folder (engine/core/hub.py), the files and their total size first, then progress, with
the licence to accept where it restricts use; the tab's weight pickers list the new files afterwards. A set made of
several repositories (MuseTalk) lists each one and where its files go, and names the files fetched by hand.

Who may click: anyone may fetch the default repositories' files into the server's weights folder (unless the app
turns visitors' downloads off); only an operator may name another repository (for a set: a copy of its main one),
since that makes the server download whatever it holds. One download runs at a time per server (a click during
another waits its turn; the CLI is refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine.core.errors import InputError
from engine.core.hub import (
    Plan,
    Presence,
    Progress,
    Source,
    checked_repo,
    get_weights,
    inventory,
    size_text,
    source_named,
)
from engine.core.settings import Settings
from engine.core.weights import server_files
from ui.forms import reported
from ui.jobs import Access


@dataclass
class WeightsActions:
    """What the panel does, callable without a page (tests call `get` directly, with a request stand-in)."""

    settings: Settings
    access: Access
    source: Source
    pickers: int = 0  # weight dropdowns to refresh after a download, in the order the click's outputs list them
    visitors_may_download: bool = True
    endpoint: str | None = None  # the Hub (None: huggingface_hub's, i.e. HF_ENDPOINT)

    def mine(self) -> list[Presence]:
        return [p for p in inventory(self.settings) if p.source is self.source]

    def status(self) -> str:
        """What this engine's weights look like here: names under the weights folder, never other server paths."""
        lines = []
        for item in self.mine():
            if item.ready:
                where = item.found.relative_to(self.settings.weights_dir) if item.found.is_relative_to(
                    self.settings.weights_dir) else item.found.name  # fmt: skip
                lines.append(f"- ✅ {item.what}: `{where}`")
            else:
                wrong = [f"missing {', '.join(item.missing)}"] if item.missing else []
                wrong += [f"cannot load {problem}" for problem in item.broken]
                lines.append(f"- ❌ {item.what}: {'; '.join(wrong)}")
        ready = all(item.ready for item in self.mine())  # a configured folder may hold the file already
        for by_hand in self.source.by_hand:
            if not ready and not (self.settings.weights_dir / by_hand.place).is_file():
                lines.append(f"- ✋ by hand: `{by_hand.place}` in the weights folder ({by_hand.what}), from "
                             f"{by_hand.origin}")  # fmt: skip
        return "\n".join(lines)

    def choices(self) -> list[Any]:
        """gr.update()s giving every weight picker the files this server has now."""
        names = ["", *server_files(self.settings)]
        return [gr.update(choices=names) for _ in range(self.pickers)]

    def get(
        self, repo: str | None, accepted: bool, request: gr.Request | None, progress: Progress | None = None
    ) -> tuple[Any, ...]:
        """(the status text, *picker updates) after the download; a refusal is one line in a gr.Error."""
        with reported(f"getting the {self.source.title} weights"):
            operator = self.access.is_operator(request)
            if not operator and not self.visitors_may_download:
                raise InputError("downloading weights is for the operator of this server")
            chosen = checked_repo(repo, self.source)
            if chosen.lower() != self.source.repo.lower() and not operator:
                raise InputError(f"only the operator may download from another repository; visitors get the files "
                                 f"of {self.source.repo}")  # fmt: skip
            fetched = get_weights(self.source.name, self.settings, chosen, bool(accepted), progress, self.endpoint)
        size = sum(f.size for f in fetched.plan.files if f.target in fetched.placed)
        origins = _repos(fetched.plan)
        head = (f"**{self.source.title}**: {len(fetched.placed)} file(s) downloaded ({size_text(size)}) from {origins},"
                f" {len(fetched.kept)} already here; pick them in the weights list.")  # fmt: skip
        return ("\n\n".join([head, *fetched.notes, self.status()]), *self.choices())


def _repos(plan: Plan) -> str:
    return ", ".join(f"`{repo}`" for repo, _ in plan.repos)


def contents(source: Source) -> str:
    """What a set of several repositories fetches and where it goes (names under the weights folder, never server
    paths), and what is placed by hand; "" for a single repository's files."""
    shares = source.shares()
    if len(shares) == 1 and not source.by_hand:
        return ""
    lines = ["From the Hub, into the weights folder:"]
    for share in shares:
        names = ", ".join([*share.patterns, *(" or ".join(names) for names in share.picks)])
        lines.append(f"- `{share.repo}`: {names} → `{share.into or '.'}/`")
    if source.by_hand:
        lines += ["", "By hand (no official Hub copy):"]
        lines += [f"- `{item.place}` ({item.what}), from {item.origin}" for item in source.by_hand]
    return "\n".join(lines)


def weights_panel(
    settings: Settings,
    access: Access,
    engine: str,
    pickers: Sequence[gr.Dropdown] = (),
    visitors_may_download: bool = True,
    endpoint: str | None = None,
) -> WeightsActions:
    """Render the panel in the current Blocks context: `engine` is `liveportrait`, `wav2lip` (Wav2Lip and S3FD) or
    `musetalk` (its three repositories; the face-parsing file is named, to place by hand);
    `pickers` are the tab's weight dropdowns (ui/widgets.py server_file_picker), refreshed after a download."""
    actions = WeightsActions(settings, access, source_named(engine), len(pickers), visitors_may_download, endpoint)
    source = actions.source
    with gr.Accordion(f"Get the official {source.title} weights", open=False):
        gr.Markdown(f"Downloads the files this engine needs from the Hugging Face Hub into this server's weights "
                    f"folder, with their total size first. {source.licence}")  # fmt: skip
        if listing := contents(source):
            gr.Markdown(listing)
        status = gr.Markdown(actions.status())
        label = "Hub repository (only the operator may change it)"
        if len(source.shares()) > 1:
            label = (
                f"Hub repository of {source.title}'s own files (only the operator may change it; the others are fixed)"
            )
        with gr.Row():
            repo = gr.Textbox(value=source.repo, label=label, scale=3)
            accept = gr.Checkbox(
                value=False, visible=source.needs_acceptance, scale=2,
                label="I accept the licence above",
            )  # fmt: skip
            button = gr.Button("Get weights", scale=1)

    def get(repo: str, accepted: bool, request: gr.Request, progress: Any = gr.Progress()) -> tuple[Any, ...]:
        return actions.get(repo, accepted, request, lambda fraction, label: progress(fraction, desc=label))

    button.click(get, [repo, accept], [status, *pickers], api_visibility="private", concurrency_id="weights",
                 concurrency_limit=1)  # fmt: skip
    return actions


__all__ = ["WeightsActions", "contents", "weights_panel"]
