"""The documented API calls run as shown: the README's marked `gradio_client` snippets for /lipsync and /portrait, and
the Python examples that the app's own API page shows for them, each run as written (only the server's URL swapped
for the test app's) in a fresh Python from the repository's folder, against app.py started by the test. The README's
other API calls are checked against the app's API page (endpoint and parameter names), and every flag its command
lines show against the command's parser."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import RunningApp

pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README_URL = "http://127.0.0.1:7860"
# A fenced Python block right after its marker comment: <!-- snippet: NAME -->
SNIPPET = re.compile(r"<!-- snippet: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)\n```", re.DOTALL)


def readme_snippets(text: str) -> dict[str, str]:
    return {m["name"]: m["code"] for m in SNIPPET.finditer(text)}


def run_python(code: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """`code` in a new interpreter, from the repository's folder (where the snippets' asset paths lead)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, check=False)  # fmt: skip


def test_the_readme_marks_a_lipsync_and_a_portrait_snippet() -> None:
    snippets = readme_snippets((ROOT / "README.md").read_text())
    assert set(snippets) >= {"lipsync", "portrait"}
    for name in ("lipsync", "portrait"):
        code = snippets[name]
        assert README_URL in code and f'api_name="/{name}"' in code and "handle_file(" in code, name
        for path in re.findall(r'handle_file\("([^"]+)"\)', code):
            assert (ROOT / path).is_file(), f"{name} snippet names {path}, which the repository lacks"


@pytest.mark.parametrize("name", ["lipsync", "portrait"])
def test_readme_snippet_runs_against_the_app(running_app: RunningApp, name: str) -> None:
    code = readme_snippets((ROOT / "README.md").read_text())[name]
    proc = run_python(code.replace(README_URL, running_app.url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    *_, video_line = proc.stdout.strip().splitlines()
    assert Path(video_line).is_file() and Path(video_line).stat().st_size > 5_000, proc.stdout
    assert "frames at" in proc.stdout  # the summary: the run's frames, device and timings


def test_readme_streaming_snippet_gets_the_segments_as_they_are_made(running_app: RunningApp) -> None:
    code = readme_snippets((ROOT / "README.md").read_text())["lipsync-stream"]
    proc = run_python(code.replace(README_URL, running_app.url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    *_, summary = lines = proc.stdout.strip().splitlines()
    segments = [line for line in lines if line.startswith("segment ")]
    assert len(segments) >= 2 and "frames at 25" in summary, proc.stdout
    for line in segments:
        path = line.removeprefix("segment ")
        assert path.endswith(".ts") and Path(path).stat().st_size > 0, line


def _api_page(app: RunningApp) -> dict:
    with urllib.request.urlopen(f"{app.url}/gradio_api/info", timeout=30) as response:
        return json.load(response)["named_endpoints"]


@pytest.mark.parametrize("endpoint", ["/lipsync", "/portrait"])
def test_api_page_examples_are_real_values(running_app: RunningApp, endpoint: str) -> None:
    """Every parameter's example is its default, and each required file an asset of this repository (not Gradio's
    placeholders: a PDF from the web for a file, "Hello!!" for text)."""
    for p in _api_page(running_app)[endpoint]["parameters"]:
        example = p["example_input"]
        if p["parameter_has_default"]:
            assert example == p["parameter_default"], p
        else:
            assert example["url"].startswith("assets/") and (ROOT / example["url"]).is_file(), p


@pytest.mark.parametrize("endpoint", ["/lipsync", "/portrait"])
def test_api_page_python_example_runs_as_shown(running_app: RunningApp, endpoint: str) -> None:
    code = _api_page(running_app)[endpoint]["code_snippets"]["python"]
    assert "handle_file('assets/" in code and running_app.url in code  # the page names this server already
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "frames at" in proc.stdout, proc.stdout[-2000:]  # it printed the result, summary included


# Every fenced Python block of the README, marked or not: the API section's other endpoints are shown unmarked.
PYTHON_BLOCK = re.compile(r"```python\n(.*?)\n```", re.DOTALL)


def readme_api_calls(text: str) -> list[tuple[str, set[str], int]]:
    """(endpoint, keyword names, positional count) of every `client.predict(...)` / `client.submit(...)` in the
    README's Python blocks."""
    calls = []
    for block in PYTHON_BLOCK.findall(text):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "predict", "submit"):  # fmt: skip
                keywords = {k.arg: k.value for k in node.keywords}
                endpoint = keywords.pop("api_name")
                assert isinstance(endpoint, ast.Constant), ast.unparse(node)
                calls.append((endpoint.value, set(keywords), len(node.args)))
    return calls


def test_every_api_call_in_the_readme_names_an_endpoint_and_its_parameters(running_app: RunningApp) -> None:
    """Only the marked snippets run; the other calls the API section shows (jobs, ONNX, sweeps, plans, cost) are
    checked against the API page: a renamed endpoint or parameter there leaves a user's copied call failing."""
    endpoints = _api_page(running_app)
    calls = readme_api_calls((ROOT / "README.md").read_text())
    assert len(calls) >= 25, calls  # the API section's calls were all found
    for endpoint, keywords, positional in calls:
        assert endpoint in endpoints, f"the README calls {endpoint}, which the app does not serve"
        parameters = [p["parameter_name"] for p in endpoints[endpoint]["parameters"]]
        assert keywords <= set(parameters), (endpoint, sorted(keywords - set(parameters)), parameters)
        assert positional <= len(parameters), (endpoint, positional, parameters)


# `avatarbench COMMAND [SUBCOMMAND] ...` up to the end of its line (continuations joined) or of its `code`.
COMMAND_LINE = re.compile(r"avatarbench ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?([^\n`]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?:[ =]([^\s\[\]()]+))?")
CHOICES_IN_HELP = re.compile(r"\(([\w.:-]+(?:\|[\w.:-]+)+)\)")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices) if found else {}


def test_every_flag_the_readme_shows_for_a_command_is_one_of_its_flags() -> None:
    """The README's command lines are what a first-time user copies: each flag must be the command's own, spelled
    as shown, and each value listed as alternatives (`--precision auto|fp16|...`) one of those its help offers."""
    import app
    from engine.cli import build_parser, engine_commands

    commands = _subcommands(build_parser([*engine_commands(), app.SERVE]))
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    checked = 0
    for line in COMMAND_LINE.finditer(text):
        command, word, rest = line.groups()
        if command not in commands:
            continue  # prose: "avatarbench finds ..."
        parser = commands[command]
        if _subcommands(parser):  # weights, onnx, plan: the word after names the command
            if word not in _subcommands(parser):
                continue  # "`avatarbench weights`": the group alone
            parser = _subcommands(parser)[word]
        elif word:
            rest = f" {word}{rest}"
        options = {flag: action for action in parser._actions for flag in action.option_strings}
        for flag, value in FLAG.findall(rest):
            assert flag in options, f"README: `avatarbench {command} ... {flag}`, which it does not take"
            offered = CHOICES_IN_HELP.search(options[flag].help or "")
            if offered and "|" in value:
                shown = set(value.split("|"))
                assert shown <= set(offered[1].split("|")), (command, flag, sorted(shown), offered[1])
            checked += 1
    assert checked >= 150, checked  # the Command line section's flags were all found


# The scripts a user runs (the README's Layout and Benchmarks sections name them); library modules have no __main__.
SCRIPTS = sorted(str(p.relative_to(ROOT)) for folder in ("scripts", "benchmarks") for p in (ROOT / folder).glob("*.py")
                 if "__main__" in p.read_text())  # fmt: skip


def _mtimes(*folders: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for folder in folders for path in folder.iterdir()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_the_readme_names_answers_help_and_writes_nothing(tmp_path: Path, script: str) -> None:
    """A first-time user asks a script for `-h` before running it: scripts/make_driving_clip.py took no options and
    ran on `-h`, rewriting the committed assets/driving.mp4 from the repository's folder (and failing elsewhere)."""
    committed = (ROOT / "assets", ROOT / "benchmarks" / "results")
    before = _mtimes(*committed)
    proc = subprocess.run([sys.executable, str(ROOT / script), "-h"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    assert _mtimes(*committed) == before
