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
