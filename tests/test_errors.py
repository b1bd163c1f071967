"""engine/core/errors.py: a library's message quoted in ours stays on one line."""

from __future__ import annotations

from engine.core.errors import AvatarbenchError, InputError, SetupError, one_line


def test_a_librarys_error_is_quoted_on_one_line_with_single_spaces() -> None:
    """ONNX Runtime's, FFmpeg's and the Hub's messages run over lines, with CRLFs, tabs and indents."""
    assert one_line(RuntimeError("Load model failed:\r\n\tnode  'conv1'\n  bad shape\n")) == (
        "Load model failed: node 'conv1' bad shape"
    )
    assert one_line("") == ""


def test_a_users_mistake_is_also_a_value_error_and_a_setup_problem_is_not() -> None:
    """Callers that catch ValueError (argparse's type functions, numpy-style checks) see bad input as one."""
    assert issubclass(InputError, ValueError) and issubclass(InputError, AvatarbenchError)
    assert issubclass(SetupError, AvatarbenchError) and not issubclass(SetupError, ValueError)
