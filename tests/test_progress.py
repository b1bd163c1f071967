"""engine/core/progress.py: the CLI's progress bar goes to stderr only, shows the work's fraction within 0 to 100 %,
cuts long labels, writes plain lines where stderr is not a terminal, and draws nothing when quiet."""

from __future__ import annotations

import pytest

from engine.core import progress
from engine.core.progress import STEPS, ProgressBar


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """Captured stderr that says it is a terminal, as a user's shell is."""
    monkeypatch.setattr(progress, "on_a_terminal", lambda: True)
    return capsys


def test_the_bar_shows_the_fraction_done_on_stderr_within_the_whole(terminal: pytest.CaptureFixture[str]) -> None:
    """An engine's fraction past either end (a last step's rounding, a stage counted twice) is drawn at 0 or 100 %,
    never past them; stdout stays clean for results and JSON."""
    with ProgressBar(label_width=12) as bar:
        drawn = []
        for fraction in (-0.5, 0.25, 0.3336, 1.7):
            bar(fraction, "decoding the speech file")
            drawn.append(bar.bar.n)
        assert bar.bar.desc == "decoding the"  # cut to its width
    assert drawn == [0, STEPS // 4, round(0.3336 * STEPS), STEPS] and STEPS == 1000
    out, err = terminal.readouterr()
    assert out == "" and "100.0% |" in err and "decoding the" in err and "decoding the speech" not in err
    bar(1.0, "after the end")  # a closed bar draws nothing and does not fail
    assert terminal.readouterr() == ("", "")


def test_a_log_gets_a_line_per_stage_and_tenth_of_the_work_not_a_redrawn_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Where stderr is a file or a pipe, tqdm's carriage returns piled every update into one line: a line is written
    when the stage changes (its counts aside: one per frame would flood a log) or another tenth is done."""
    with ProgressBar(label_width=12) as bar:
        assert bar.bar is None
        bar(-0.5, "reading the speech file")
        bar(0.02, "reading the speech file")  # the same stage, the same tenth: no line
        for frame in range(1, 6):
            bar(0.05 + 0.02 * frame, f"frame {frame}/5")  # 0.07 to 0.15: one line, then the second tenth's
        bar(1.7, "encoding")
    bar(1.0, "after the end")  # a closed bar writes nothing and does not fail
    out, err = capsys.readouterr()
    assert out == "" and "\r" not in err
    assert err.splitlines() == ["  0.0% reading the", "  7.0% frame 1/5", " 11.0% frame 3/5", "100.0% encoding"]


def test_a_quiet_bar_draws_nothing(terminal: pytest.CaptureFixture[str]) -> None:
    with ProgressBar(quiet=True) as bar:
        bar(0.5, "halfway")
    assert terminal.readouterr() == ("", "")
    with ProgressBar(quiet=True) as bar:  # nor in a log
        terminal_off = bar.lines
        bar(0.5, "halfway")
    assert not terminal_off and terminal.readouterr() == ("", "")
