"""Fine-tuning from a run (`bcd train --weights RUN`) keeps what that run's model saw as
input: the settings that prepare the images come from the parent unless given, and a
given one that differs is warned about."""
from __future__ import annotations

import json
import logging

import pytest


def _parent(tmp_path, **config):
    run = tmp_path / "parent"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": config}))
    return run


def _config(*argv):
    from bcd.cli import build_parser, train_config
    return train_config(build_parser().parse_args(["train", "--out", "x", *argv]))


def test_settings_not_given_come_from_the_parent(tmp_path):
    parent = _parent(tmp_path, scan_region="auto", colour_marks="inpaint", white_calipers="erase", thin_marks="open")
    config = _config("--weights", str(parent))
    assert (config.scan_region, config.colour_marks, config.white_calipers, config.thin_marks) == \
        ("auto", "inpaint", "erase", "open")
    assert _config().thin_marks == "keep" and _config().white_calipers == "keep"   # no parent: the defaults


def test_a_parent_from_before_a_setting_gives_what_it_meant(tmp_path):
    parent = _parent(tmp_path, scan_region="auto")          # before colour marks, calipers and thin marks existed
    config = _config("--weights", str(parent))
    assert (config.colour_marks, config.white_calipers, config.thin_marks) == ("keep", "keep", "keep")


def test_a_given_setting_wins_and_is_warned_about(tmp_path, caplog):
    from train.trainer import warn_input_changes
    parent = _parent(tmp_path, scan_region="auto", colour_marks="inpaint", white_calipers="keep", thin_marks="open")
    config = _config("--weights", str(parent), "--thin-marks", "keep")
    assert config.thin_marks == "keep"
    with caplog.at_level(logging.WARNING, logger="train.trainer"):
        assert warn_input_changes(config) == ["thin-marks open -> keep"]
    assert "prepared its images otherwise" in caplog.text
    assert warn_input_changes(_config("--weights", str(parent))) == []


@pytest.mark.parametrize("weights", ["none", "imagenet"])
def test_other_weights_take_nothing(weights):
    assert _config("--weights", weights).thin_marks == "keep"
