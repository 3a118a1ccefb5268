"""Running ``convpipe`` in-process as the installed command runs, and checking its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from convpipe.cli import main


def invoke(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """Run ``convpipe ARGS`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else int(code)), out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    """One line on stderr, convpipe's prefix, no traceback, and every fragment in it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convpipe: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def lease_held(output: Path, prefix: str = ".convpipe-lock") -> bool:
    """Whether the output's newest lease record (``.convpipe-lock/<generation>``) is live."""
    records = sorted(output.glob(f"{prefix}/*"))
    return bool(records) and not json.loads(records[-1].read_text())["released"]
