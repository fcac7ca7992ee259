"""`ftlab baseline from-card -o FILE` writes only a new file or one it wrote before: never the card, nor a user's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ftlab.baselines import load_card
from ftlab.baselines.recipe_file import HEADER_START, check_output, write_recipe
from ftlab.errors import UserError

SHIPPED_CARD = Path(__file__).parents[1] / "ftlab" / "baselines" / "cards" / "gpt2-xl_ft_logits_25k.md"


@pytest.fixture
def card(tmp_path: Path) -> Path:
    return Path(shutil.copy(SHIPPED_CARD, tmp_path / "README.md"))


def test_a_new_file_and_then_its_own_file_again_are_written(tmp_path: Path, card: Path) -> None:
    output = tmp_path / "baseline.yaml"
    baseline = load_card(card)
    write_recipe(output, card, baseline)
    assert output.read_text().startswith(HEADER_START)
    assert yaml.safe_load(output.read_text()) == baseline.training_settings()
    write_recipe(output, card, baseline)  # its own file: replaced
    assert not list(tmp_path.glob(".baseline.yaml*")), "no temporary file is left"


def test_the_card_itself_and_a_users_file_are_refused(tmp_path: Path, card: Path) -> None:
    before = card.read_text()
    with pytest.raises(UserError, match="was not written by `ftlab baseline from-card`"):
        check_output(card, card)
    assert card.read_text() == before
    mine = tmp_path / "notes.yaml"
    mine.write_text("precious: true\n")
    with pytest.raises(UserError, match="it is not overwritten") as refused:
        write_recipe(mine, card, load_card(card))
    assert "--output" in str(refused.value) and mine.read_text() == "precious: true\n"
    with pytest.raises(UserError, match="is a folder"):
        check_output(tmp_path, card)
