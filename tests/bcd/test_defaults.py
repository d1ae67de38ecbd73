"""The command line and the library train (and predict, evaluate) the same recipe: every
default lives in the config dataclasses, and `bcd` only passes what the user gave."""
from __future__ import annotations

import pytest

from bcd.cli import build_parser, predict_config, train_config


def _parse(*argv):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("arch, batch_norm", [("vgg16", False), ("vgg16-bn", True)])
def test_train_cli_and_library_use_one_learning_rate(arch, batch_norm):
    from train.config import LR_SCRATCH, TrainConfig

    from_cli = train_config(_parse("train", "--out", "r", "--arch", arch))
    from_library = TrainConfig(out="r", batch_norm=batch_norm)
    assert from_cli == from_library
    assert from_cli.lr_scratch == LR_SCRATCH["batch_norm" if batch_norm else "plain"]
    assert LR_SCRATCH == {"plain": 3e-4, "batch_norm": 1e-3}     # the shipped recipes' rates


def test_train_cli_without_options_is_the_library_default():
    from train.config import TrainConfig

    assert train_config(_parse("train", "--out", "r")) == TrainConfig(out="r")


def test_given_train_options_reach_the_config():
    config = train_config(_parse("train", "--out", "r", "--arch", "vgg16-bn", "--lr", "0.01", "--epochs", "3",
                                 "--augment", "ultrasound", "--threshold", "youden"))
    assert (config.lr_scratch, config.epochs, config.threshold_method, config.batch_norm) == (0.01, 3, "youden", True)
    assert config.augment.marks > 0


def test_help_shows_the_library_defaults(capsys):
    with pytest.raises(SystemExit):
        _parse("train", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "default 0.0003, or 0.001 with --arch vgg16-bn" in text
    assert "(default 30)" in text and "(default 224)" in text


def test_predict_cli_without_options_is_the_library_default():
    from runtime.predict_files import PredictConfig

    assert predict_config(_parse("predict", "x.png")) == PredictConfig()
    assert predict_config(_parse("predict", "x.png", "--batch-size", "2")).batch_size == 2


def test_evaluate_cli_defaults_are_the_library_defaults():
    from train.evaluate import EvaluateConfig

    args = _parse("evaluate")
    assert str(args.split) == EvaluateConfig().split and str(args.bootstrap) == str(EvaluateConfig().bootstrap)


def test_export_cli_choices_are_the_librarys():
    """The parser lists its choices itself (building it imports no library module); they
    must be the ones the export's config accepts."""
    from export.config import CALIBRATION_METHODS, INT8_WEIGHT_CHOICES

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    choices = {a.dest: tuple(a.choices) for a in export._actions if a.choices}
    assert choices["calib_method"] == CALIBRATION_METHODS
    assert choices["int8_weights"] == INT8_WEIGHT_CHOICES
