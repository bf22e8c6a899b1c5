import os
import stat

import pytest

from maskgit_lab.io import atomic_write, atomic_write_text


def test_atomic_write_mode_and_content(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "result.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("previous")

    def broken(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
