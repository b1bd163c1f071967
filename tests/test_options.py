"""engine.core.options: how raw values from the CLI, the API and JSON become a checked config, and the messages."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.bench.config import CostConfig, LlmRequest, NetworkPlanConfig, SweepRequest
from engine.core.errors import InputError
from engine.core.options import (
    Config,
    add_arguments,
    fields,
    from_args,
    number_tuple,
    option,
    pairs,
    switch_tuple,
    word_tuple,
)
from engine.lipsync.config import LipSyncConfig
from engine.onnx.config import EvalConfig, InspectConfig
from engine.portrait.config import PortraitConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class SampleError(InputError):
    pass


@dataclass
class Sample(Config):
    error = SampleError

    source: Path = option(help="a file", file=True)
    mode: str = option("fast", help="how", choices=("fast", "slow"))
    count: int | None = option(None, help="how many (empty: auto)", low=1, high=10)
    scale: float = option(0.5, help="scale", low=0.1, high=1.0)
    flag: bool = option(True, help="a switch")
    sizes: tuple[int, ...] = option((1, 8), help="sizes", low=1, text=number_tuple(int))
    box: tuple[int, ...] | None = option(None, help="a box", text=number_tuple(int, 4))
    names: tuple[str, ...] = option(("a",), help="names", choices=("a", "b"), text=word_tuple("name"))
    switches: tuple[bool, ...] = option((False,), help="on/off", text=switch_tuple())
    symbols: tuple[tuple[str, int], ...] = option((), help="NAME=VALUE", text=pairs())
    label: str | None = option(None, help="free text")
    files: tuple[Path, ...] | None = option(None, help="files", file=True, many=True)

    def problems(self) -> list[str]:
        return ["slow needs a count"] if self.mode == "slow" and self.count is None else []


def test_raw_values_are_converted_as_each_surface_sends_them() -> None:
    cli = Sample.build(
        {
            "source": "a.png",
            "count": "3",
            "scale": "0.25",
            "flag": "off",
            "sizes": "2, 4",
            "box": "1 2 3 4",
            "names": "b,a",
            "switches": "on,off",
            "symbols": "seq=8",
            "label": " x ",
        }
    )
    api = Sample.build(
        {
            "source": "a.png",
            "count": 3.0,
            "scale": 0.25,
            "flag": False,
            "sizes": "2,4",
            "box": "1,2,3,4",
            "names": "b,a",
            "switches": "on,off",
            "symbols": "seq=8",
            "label": "x",
        }
    )
    python = Sample(Path("a.png"), count=3, scale=0.25, flag=False, sizes=(2, 4), box=(1, 2, 3, 4), names=("b", "a"),
                    switches=(True, False), symbols=(("seq", 8),), label="x").checked()  # fmt: skip
    assert cli == api == python
    assert cli.source == Path("a.png") and cli.count == 3 and cli.box == (1, 2, 3, 4) and cli.symbols == (("seq", 8),)


def test_defaults_and_empty_values() -> None:
    config = Sample.build({"source": "a.png"})
    assert (config.mode, config.count, config.sizes, config.box, config.symbols, config.files) == (
        "fast",
        None,
        (1, 8),
        None,
        (),
        None,
    )
    empty = Sample.build({"source": "a.png", "count": "", "box": "", "label": "", "symbols": "", "files": []})
    assert empty == config  # an empty box in a form means "not given"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "source is required: a file"),
        ({"mode": "medium"}, "mode 'medium' is not one of fast, slow"),
        ({"count": 0}, "count 0 is outside 1..10"),
        ({"count": 2.5}, "count must be a whole number, got 2.5"),
        ({"count": True}, "count must be a whole number, got True"),
        ({"scale": "nan"}, "scale must be a finite number"),
        ({"scale": 2}, "scale 2 is outside 0.1..1"),
        ({"scale": 1.0000001}, "scale 1.0000001 is outside 0.1..1"),  # not "1", which is inside
        ({"flag": "maybe"}, "flag must be true or false (on/off), got 'maybe'"),
        ({"sizes": "1,x"}, "sizes: '1,x' is not a comma-separated list of whole numbers"),
        ({"sizes": "4,4"}, "sizes '4,4' lists a value twice"),
        ({"sizes": "0,2"}, "sizes 0 is below 1"),  # not "outside 1..", a range cut short
        ({"sizes": ""}, "sizes is empty: sizes [1..]"),
        ({"mode": ""}, "mode is empty: how; give one of fast, slow"),  # it said only what the field is
        ({"scale": " "}, "scale is empty: scale [0.1..1]"),
        ({"names": ""}, "names is empty: names; give one or more, comma-separated, of a, b"),
        ({"box": "1,2,3"}, "box: give 4 whole numbers"),
        ({"names": "a,c,d"}, "names 'c', 'd' are not one of a, b"),
        ({"switches": "up"}, "switches: 'up': give on, off or on,off"),
        ({"symbols": "seq"}, "is not NAME=VALUE"),
        ({"mode": "slow"}, "slow needs a count"),
        ({"colour": "red"}, "unknown option(s) colour; accepted: source, mode,"),
        ({"count": 10**400}, f"count {'1' + '0' * 59}... (401 characters) is outside 1..10"),  # not all 401 digits
        ({"mode": "x" * 5000}, "mode 'xxx"),
        ({"count": "y" * 5000}, "... (5002 characters)"),
    ],
)
def test_each_refusal_says_what_is_accepted(values: dict, message: str) -> None:
    with pytest.raises(SampleError) as refused:
        Sample.build({"source": "a.png", **values} if values else values)
    assert message in str(refused.value) and len(str(refused.value)) < 300


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SampleError) as refused:
        Sample.build({"source": "a.png", "count": 0, "mode": "x", "scale": 9})
    assert str(refused.value).count(";") == 2


def test_option_defaults_must_be_immutable() -> None:
    with pytest.raises(TypeError, match="immutable"):
        option([1], help="a list")


def test_the_cli_takes_every_field_as_a_flag_with_the_same_checks() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Sample)
    flags = {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in fields(Sample)}
    assert flags["flag"] == ["--flag", "--no-flag"] and flags["symbols"] == ["--symbols"]
    args = parser.parse_args(["--source", "a.png", "--no-flag", "--sizes", "2,4", "--files", "x.png", "y.png"])
    config = from_args(Sample, args)
    assert config.flag is False and config.sizes == (2, 4) and config.files == (Path("x.png"), Path("y.png"))
    with pytest.raises(SampleError, match=r"count 11 is outside 1\.\.10"):
        from_args(Sample, parser.parse_args(["--source", "a.png", "--count", "11"]))
    for listed in ("2,,4", "2,4,", ",2"):  # "3,,1" as labels became (3, 1): the 1 went to the second image
        with pytest.raises(SampleError, match="empty item between commas"):
            from_args(Sample, parser.parse_args(["--source", "a.png", "--sizes", listed]))
    repeated = parser.parse_args(["--source", "a.png", "--files", "x.png", "--files", "y.png", "z.png"])
    assert from_args(Sample, repeated).files == (Path("x.png"), Path("y.png"), Path("z.png"))  # it kept the last list


CONFIGS = [
    (LipSyncConfig, {"face": ASSETS / "face.jpg", "audio": ASSETS / "speech.wav"}),
    (PortraitConfig, {"source": ASSETS / "face.jpg", "driving": ASSETS / "driving.mp4"}),
    (EvalConfig, {"example": "wav2lip"}),
    (InspectConfig, {"model": "m.onnx"}),
    (SweepRequest, {}),
    (LlmRequest, {"gpu": "T4", "llm": "mistral-7b"}),
    (NetworkPlanConfig, {"gpu": "T4"}),
    (CostConfig, {"throughput": 100.0, "measured_on": "H100"}),
]


@pytest.mark.parametrize(("cls", "required"), CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_every_capability_config_round_trips_through_its_text_form(cls: type[Config], required: dict) -> None:
    """What a config writes (reports, stored jobs, API defaults) builds the same config back; every field is
    documented, and nothing but the files or names a request cannot do without is required."""
    config = cls.build(required)
    assert cls.build(config.to_text()) == config
    assert all(f.option.help.strip() for f in fields(cls))
    assert {f.name for f in fields(cls) if f.required} <= set(required)


def test_a_subset_config_keeps_its_fields_options_checks_and_error() -> None:
    from engine.core.options import subset_config
    from engine.lipsync.config import AvatarConfig, LipSyncError

    assert [f.name for f in fields(AvatarConfig)][:2] == ["face", "batch_size"]  # the source's order
    assert {f.name: f.option for f in fields(AvatarConfig)}["bbox_shift"] == {
        f.name: f.option for f in fields(LipSyncConfig)
    }["bbox_shift"]
    with pytest.raises(LipSyncError, match=r"bbox shift 500 is outside -100\.\.100") as error:
        AvatarConfig.build({"face": "face.jpg", "bbox_shift": "500"})
    with pytest.raises(LipSyncError, match=r"bbox shift 500 is outside -100\.\.100") as same:
        LipSyncConfig.build({"face": "face.jpg", "audio": "a.wav", "bbox_shift": "500"})
    assert str(error.value) == str(same.value)
    with pytest.raises(LipSyncError, match="unknown option"):
        AvatarConfig.build({"face": "face.jpg", "audio": "a.wav"})  # speech is not an avatar's option
    with pytest.raises(ValueError, match="no field"):
        subset_config(LipSyncConfig, "Broken", ("face", "voice"), "")


@dataclass
class Limited(Config):
    error = SampleError

    gap: int = option(0, help="a gap", high=5)
    size: int = option(1, help="a size", low=1, high=1048576)


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (Sample, {"count": 11}, "count 11 is outside 1..10"),
        (Sample, {"scale": True}, "scale must be a finite number, got True"),  # a switch is not 1.0
        (Sample, {"box": "1,2,3,4,5"}, "box: give 4 whole numbers, e.g. 1,8,32,128"),  # not only too few
        (Sample, {"symbols": "seq=0"}, "'seq=0' is not NAME=VALUE with a whole number >= 1"),
        (Sample, {"symbols": "seq=8,seq=16"}, "symbols: seq is given twice"),
        (Sample, {"symbols": "seq=²"}, "'seq=²' is not NAME=VALUE with a whole number >= 1"),  # isdigit() takes ²
        (Sample, {"symbols": "seq=" + "9" * 5000}, "is not NAME=VALUE with a whole number >= 1"),  # int(): 4300 max
        (Sample, {"count": 10**59}, f"count {10**59} is outside 1..10"),  # 60 characters: shown whole
        (Limited, {"gap": 6}, "gap 6 is above 5"),  # an upper bound alone: not "outside ..5"
        (Limited, {"size": 2**21}, "size 2097152 is outside 1..1048576"),  # not 1.04858e+06
    ],
)
def test_bounds_and_text_forms_refuse_at_their_edges_in_plain_words(cls: type, values: dict, message: str) -> None:
    """The edges of the ranges and text forms: a bound is inclusive, a pair list takes each name once with a value
    of at least 1 in ASCII digits, a box takes exactly its count, and the message shows the bound as written."""
    with pytest.raises(SampleError) as refused:
        cls.build({"source": "a.png", **values} if cls is Sample else values)
    assert message in str(refused.value)


def test_edges_that_are_accepted() -> None:
    """A value at its bound is inside it; 0 is false as on, off, yes and no are words for a switch; a switch given
    twice the same way is that one way, not a list with a value twice."""
    config = Sample.build({"source": "a.png", "count": 10, "scale": "1", "flag": "0", "switches": "on,on"})
    assert (config.count, config.scale, config.flag, config.switches) == (10, 1.0, False, (True,))
    assert Limited.build({"gap": 5, "size": 1048576}).size == 1048576


@dataclass
class Positional(Config):
    error = SampleError

    model: Path = option(help="the model", file=True, positional=True)
    count: int = option(1, help="how many", low=1, high=10)


def test_the_cli_help_gives_each_range_and_requires_a_required_positional(capsys) -> None:
    """The help's [1..10] is the range the flag is checked against; a required positional left out is argparse's
    usage error, before any work."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, Positional)
    assert "how many [1..10]; default: 1" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "the following arguments are required: model" in capsys.readouterr().err


def test_portrait_options_that_cannot_run_together_or_past_their_bounds_are_refused() -> None:
    """The ONNX backends have no bf16 path; a batch above 256 frames is refused as a bound before any memory check."""
    from engine.portrait.config import PortraitError

    files = {"source": ASSETS / "face.jpg", "driving": ASSETS / "driving.mp4"}
    with pytest.raises(PortraitError, match="the ONNX backends run fp32 or fp16, not bf16"):
        PortraitConfig.build({**files, "backend": "onnx-cpu", "precision": "bf16"})
    PortraitConfig.build({**files, "backend": "torch", "precision": "bf16"})
    with pytest.raises(PortraitError, match=r"batch size 257 is outside 1\.\.256"):
        PortraitConfig.build({**files, "batch_size": 257})
