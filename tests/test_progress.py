"""engine/core/progress.py: the CLI's progress bar goes to stderr only, shows the work's fraction within 0 to 100 %,
cuts long labels, and draws nothing when quiet."""

from __future__ import annotations

import pytest

from engine.core.progress import STEPS, ProgressBar


def test_the_bar_shows_the_fraction_done_on_stderr_within_the_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """An engine's fraction past either end (a last step's rounding, a stage counted twice) is drawn at 0 or 100 %,
    never past them; stdout stays clean for results and JSON."""
    with ProgressBar(label_width=12) as bar:
        drawn = []
        for fraction in (-0.5, 0.25, 0.3336, 1.7):
            bar(fraction, "decoding the speech file")
            drawn.append(bar.bar.n)
        assert bar.bar.desc == "decoding the"  # cut to its width
    assert drawn == [0, STEPS // 4, round(0.3336 * STEPS), STEPS] and STEPS == 1000
    out, err = capsys.readouterr()
    assert out == "" and "100.0% |" in err and "decoding the" in err and "decoding the speech" not in err
    bar(1.0, "after the end")  # a closed bar draws nothing and does not fail
    assert capsys.readouterr() == ("", "")


def test_a_quiet_bar_draws_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ProgressBar(quiet=True) as bar:
        bar(0.5, "halfway")
    assert capsys.readouterr() == ("", "")
