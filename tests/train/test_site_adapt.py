"""`bcd adapt`: a run's conv layers aligned to a new site's unlabelled scans, folded into
the convs (train.site_adapt), on the tiny real run."""
from __future__ import annotations

import json

import numpy as np
import pytest


def _images(dataset):
    from runtime.images import read_image
    from runtime.preprocessing import PreprocessSpec, resize
    spec = PreprocessSpec(image_size=32)
    files = sorted(p for p in dataset.rglob("*.png") if "_mask" not in p.stem)
    return np.stack([resize(read_image(p), spec) for p in files]), spec


def _model(run):
    from train.tf_setup import keras
    return keras.models.load_model(run / "model.keras", compile=False)


def _conv_moments(model, images, spec, names):
    from train.site_adapt import ConvForward, channel_moments
    return channel_moments(ConvForward(model), images, spec, names, {})


def test_the_home_site_itself_changes_nothing(graded_run, tiny_dataset):
    from train.site_adapt import fit_alignments, fold
    from runtime.preprocessing import prepare_batch
    images, spec = _images(tiny_dataset)
    model = _model(graded_run)
    before = np.asarray(model(prepare_batch(list(images), spec), training=False))
    align = fit_alignments(model, images, images, spec, layers="all")
    assert len(align) == 13
    for a in align.values():
        assert np.allclose(a.scale, 1, atol=1e-3) and np.abs(a.shift).max() < 1e-2
    fold(model, align)
    after = np.asarray(model(prepare_batch(list(images), spec), training=False))
    assert np.abs(after - before).max() < 1e-3


def test_another_scanner_is_brought_back_to_the_reference(graded_run, tiny_dataset):
    """The site's scans are the same scans darker and flatter (another gain and dynamic
    range): after adapting, every conv's outputs on them have the reference's statistics,
    and the model's calls on them are nearer its calls on the originals."""
    from train.site_adapt import conv_names, fit_alignments, fold
    from runtime.preprocessing import prepare_batch
    images, spec = _images(tiny_dataset)
    site = np.clip(images * 0.55 + 30, 0, 255).astype(np.uint8)
    model = _model(graded_run)
    names = conv_names(model)

    def probabilities(m, x):
        return np.asarray(m(prepare_batch(list(x), spec), training=False))[:, 0]
    home = probabilities(model, images)
    gap_before = np.abs(probabilities(model, site) - home).mean()
    reference = _conv_moments(model, images, spec, names)
    fold(model, fit_alignments(model, images, site, spec, layers="all"))
    adapted = _conv_moments(model, site, spec, names)
    for name in names:
        (m_ref, s_ref), (m_site, s_site) = reference[name], adapted[name]
        assert np.allclose(m_site, m_ref, atol=1e-3 * (1 + np.abs(m_ref).max()))
        assert np.allclose(s_site, s_ref, rtol=1e-3, atol=1e-4)
    gap_after = np.abs(probabilities(model, site) - home).mean()
    assert gap_before > 0.02 and gap_after < 0.5 * gap_before


def test_early_layers_by_default(graded_run, tiny_dataset):
    from train.site_adapt import fit_alignments
    images, spec = _images(tiny_dataset)
    align = fit_alignments(_model(graded_run), images, images[:10], spec)
    assert sorted({name.split("_")[0] for name in align}) == ["block1", "block2", "block3"] and len(align) == 7


@pytest.mark.slow
def test_adapt_command_writes_a_run_that_evaluate_reads(graded_run, tiny_dataset, tmp_path, capsys):
    from bcd.cli import main
    out = tmp_path / "adapted"
    assert main(["adapt", str(graded_run), "--data", str(tiny_dataset), "--out", str(out)]) == 0
    info = json.loads((out / "run.json").read_text())
    record = info["site_adaptation"]
    assert record["site_scans"] == 20 and record["layers_aligned"] == 7 and record["parent"] == str(graded_run)
    assert info["data"]["site_adaptation"] == record                      # what the export's manifest copies
    assert info["threshold"] == json.loads((graded_run / "run.json").read_text())["threshold"]
    assert (out / "split.json").read_text() == (graded_run / "split.json").read_text()
    assert main(["evaluate", str(out), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_adapt_refuses_plainly(graded_run, tiny_dataset, tmp_path, capsys):
    from bcd.cli import main
    from tests.conftest import few_scans
    few = few_scans(tiny_dataset, tmp_path / "few")
    assert main(["adapt", str(graded_run), "--data", str(few), "--out", str(tmp_path / "a")]) == 2
    assert "give at least 20" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["adapt", str(tmp_path), "--data", str(few), "--out", str(tmp_path / "b")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["adapt", str(graded_run), "--data", str(few), "--out", str(few)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["adapt", str(graded_run), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert "only 0 usable" in capsys.readouterr().err
