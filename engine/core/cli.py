"""`avatarbench weights list` (what each engine would load now, what is missing and where it goes) and `avatarbench
weights get liveportrait|wav2lip|musetalk|musetalk-v1` (the official files from the Hugging Face Hub into the
weights folder: the list with sizes first, then a progress bar; a stopped download continues where it stopped when
run again)."""

from __future__ import annotations

import argparse
import sys

from engine.core.commands import Command
from engine.core.settings import get_settings


def _list(args: argparse.Namespace) -> int:
    from engine.core.hub import inventory, place_by_hand

    settings = get_settings()
    print(f"weights folder: {settings.weights_dir}")
    items = inventory(settings)
    for item in items:
        print(f"{item.engine:<13} {item.state:<8} {item.what}: {item.found or '-'}")
        if item.missing:
            print(f"{'':<23}missing: {', '.join(item.missing)}")
        for problem in item.broken:
            print(f"{'':<23}cannot load {problem}")
    if problem := settings.unmakeable_weights_dir():  # advice to put files there would lead nowhere
        print(f"avatarbench: the weights folder cannot be made ({problem}): set AVATARBENCH_WEIGHTS_DIR (or "
              "AVATARBENCH_DATA_DIR, whose weights/ it defaults to) to a folder", file=sys.stderr)  # fmt: skip
        return 2
    sources = list(dict.fromkeys(item.source for item in items if not item.ready))
    for source in sources:
        print(f"{source.title}: `{source.command}`, or by hand: {place_by_hand(source, settings)}")
    return 0


def _get(args: argparse.Namespace) -> int:
    from engine.core.errors import InputError
    from engine.core.hub import download, licence_refusal, list_files, source_named
    from engine.core.progress import ProgressBar

    settings = get_settings()
    source = source_named(args.engine)
    if source.needs_acceptance and not args.accept_licence:
        raise InputError(licence_refusal(source))  # before anything reaches the network
    settings.ensure_dirs()  # a folder that cannot be made is said before the Hub is asked
    if source.needs_acceptance:
        print(f"licence accepted: {source.licence}", file=sys.stderr)
    plan = list_files(source, settings, args.repo)
    print(plan.describe(), flush=True)
    with ProgressBar(args.quiet, label_width=64) as bar:
        fetched = download(plan, settings, bar, args.accept_licence)
    print(fetched.summary())
    return 0


def _get_flags(parser: argparse.ArgumentParser) -> None:
    from engine.core.hub import SOURCES

    defaults = ", ".join(f"{s.name}: {s.repo}" for s in SOURCES.values())
    parser.add_argument("engine", choices=list(SOURCES), help="whose official weights to get")
    parser.add_argument("--repo", metavar="OWNER/NAME", help=f"the Hub repository to get them from ({defaults})")
    parser.add_argument(
        "--accept-licence", action="store_true",
        help="accept the weights' licence (Wav2Lip's: personal, research and non-commercial use only; MuseTalk's: "
        "tagged CreativeML OpenRAIL-M on the Hub, with its use restrictions); required for wav2lip, musetalk and "
        "musetalk-v1",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


COMMANDS = [
    Command("weights list", "which model weights are here, which are missing, and where they go", _list),
    Command("weights get", "download an engine's official weights from the Hugging Face Hub", _get, flags=_get_flags),
]
