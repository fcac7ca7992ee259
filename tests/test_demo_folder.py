"""The demo build replaces ``FTLAB_HOME/demo`` only where an earlier build made it: never a user's folder that
happens to be there (FTLAB_HOME pointed at a home or project folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftlab import demo
from ftlab.errors import UserError


@pytest.mark.parametrize("force", [False, True])
def test_a_foreign_demo_folder_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "slides.pdf").write_bytes(b"mine")
    with pytest.raises(UserError, match="was not built by ftlab; it is not replaced") as refused:
        demo.ensure_demo_assets(force=force)
    assert str(tmp_path / "demo") in str(refused.value)
    assert [path.name for path in (tmp_path / "demo").iterdir()] == ["slides.pdf"]


def test_a_file_named_demo_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    (tmp_path / "demo").write_text("mine")
    with pytest.raises(UserError, match="not built by ftlab"):
        demo.ensure_demo_assets()
    assert (tmp_path / "demo").read_text() == "mine"


def test_an_earlier_build_of_another_recipe_is_its_own(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / demo.MARKER_FILENAME).write_text('{"format": 0}')
    demo._check_own(tmp_path / "demo")  # no error: an older build, replaced by the next one
    demo._check_own(tmp_path / "nothing-yet")
