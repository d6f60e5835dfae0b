"""The command line's built-in default job."""

from __future__ import annotations

from PIL import Image

from cascadeclip.cli.main import main


def test_demo_writes_a_picture_and_says_the_weights_are_random(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out
    picture = Image.open(tmp_path / "sample_prediction.png")
    assert picture.height > 300 and picture.width > 2 * 451
