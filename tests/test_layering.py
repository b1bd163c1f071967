"""DESIGN.md's rules, checked on every module: the engine never imports gradio, ui/ or app (at any depth, inside
functions too), and a room imports only rooms below it (or itself)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lower rooms first; rooms of one rank are peers and never import each other.
RANK = {
    "core": 0,
    "models": 1,
    "system": 2,
    "faces": 3,
    "runtimes": 4,
    "jobs": 5,
    "onnx": 6,
    "lipsync": 7,
    "portrait": 7,
    "bench": 8,
    "cli": 9,
    "__main__": 10,
}


def _imports(path: Path) -> list[str]:
    """Every module name an import statement in the file names, wherever the statement is."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            if node.module == "engine":  # from engine import room
                names += [f"engine.{a.name}" for a in node.names]
    return names


def _room(path: Path) -> str:
    parts = path.relative_to(ROOT / "engine").with_suffix("").parts
    return parts[0]


def _engine_files() -> list[Path]:
    return sorted(p for p in (ROOT / "engine").rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT / "engine")


def test_engine_sources_import_no_ui_at_any_depth() -> None:
    offenders = []
    for path in _engine_files():
        for name in _imports(path):
            if name.split(".")[0] in ("gradio", "gradio_client", "ui", "app"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_every_engine_module_is_in_a_ranked_room() -> None:
    rooms = {_room(p) for p in _engine_files()}
    assert rooms <= set(RANK), f"rooms without a rank: {rooms - set(RANK)}"


def test_rooms_import_only_lower_rooms() -> None:
    offenders = []
    for path in _engine_files():
        room = _room(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "engine" or len(parts) < 2 or parts[1] == room:
                continue
            target = parts[1]
            if RANK.get(target, 99) >= RANK[room]:
                offenders.append(f"{path.relative_to(ROOT)} ({room}) imports {name}")
    assert offenders == []


def _loaded_after(code: str, watched: tuple[str, ...]) -> str:
    """Which of the watched top-level packages a fresh interpreter has imported after running `code`."""
    report = f"\nprint(sorted({{n.split('.')[0] for n in sys.modules}} & {set(watched)!r}))"
    out = subprocess.run([sys.executable, "-c", "import sys\n" + code + report], cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def test_importing_every_engine_module_loads_no_gradio() -> None:
    code = (
        "import pkgutil, importlib, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)"
    )
    assert _loaded_after(code, ("gradio", "ui", "app")) == "[]"


def test_the_command_line_starts_without_torch_or_gradio() -> None:
    """`avatarbench telemetry` and friends must start fast: building the whole command table imports neither."""
    code = "import app\nfrom engine.cli import build_parser, engine_commands\n"
    code += "build_parser([*engine_commands(), app.SERVE])"
    assert _loaded_after(code, ("torch", "gradio", "onnxruntime", "cv2")) == "[]"
