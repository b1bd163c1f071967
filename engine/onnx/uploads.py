"""Where an ONNX request's model comes from: an upload (checked against the upload size limit) or a built-in
example (exported on first use), prepared in a private folder and inspected. The CLI, the tab and the job queue
all go through here, so a model is refused the same way wherever it arrives."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.core.settings import Settings
from engine.onnx.examples import EXAMPLES, example_path
from engine.onnx.inspection import inspect_model
from engine.onnx.model import Limits, ModelInfo
from engine.onnx.prepare import ZIP_MAGIC, file_sha256, prepare_model


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the file as given (an upload, or the cached export of an example)
    limits: Limits
    name: str  # what reports call it: the upload's file name, or "example: NAME"
    example: str | None
    local: bool = False  # a file named on the command line: its external data files may sit beside it


def model_source(model: Path | None, example: str | None, settings: Settings, local: bool = False) -> ModelSource:
    """The request's model file; an example needs no upload limit (we made it). `local`: named on the command
    line, so the external data files beside it are the user's own (an upload's folder is never read)."""
    if example is not None:
        return ModelSource(example_path(example, settings.cache_dir), Limits(), f"example: {example}", example)
    path = Path(model)  # type: ignore[arg-type]  # the config guarantees one of the two
    return ModelSource(path, Limits(max_file_bytes=settings.max_upload_bytes), path.name, None, local)


@contextlib.contextmanager
def prepared(
    source: ModelSource, settings: Settings, symbols: dict[str, int] | None = None
) -> Iterator[tuple[Path, ModelInfo]]:
    """The model checked and unpacked in a private folder under the cache (removed afterwards), and its
    inspection at `symbols`."""
    settings.ensure_dirs()
    with tempfile.TemporaryDirectory(prefix="onnx-", dir=settings.cache_dir) as work:
        path = prepare_model(source.path, work, source.limits, beside=source.local)
        yield path, inspect_model(path, symbols or None, source.limits, sha256=file_sha256(source.path))


def external_files(source: ModelSource, info: ModelInfo) -> list[Path]:
    """The user's own files a run reads besides the model: a plain model's external-data files beside it (a zip's
    are inside the zip, and an upload's folder is never read)."""
    if not source.local:
        return []
    with open(source.path, "rb") as f:
        if f.read(4).startswith(ZIP_MAGIC):
            return []
    return [source.path.parent / rel for rel in info.external_data]


def display_name(source: ModelSource) -> str:
    return EXAMPLES[source.example].title if source.example else source.name


__all__ = ["ModelSource", "display_name", "external_files", "model_source", "prepared"]
