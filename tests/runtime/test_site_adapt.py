"""`bcd adapt` on an export: the ONNX files' convs aligned to a site's unlabelled scans with
the runtime's install (runtime.site_adapt), on the tiny real export's FP32 and INT8 files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

VARIANTS = ("onnx-fp32", "onnx-int8")


def _arrays(dataset, spec):
    from runtime.images import read_image
    from runtime.preprocessing import prepare_batch, resize
    files = sorted(p for p in dataset.rglob("*.png") if "_mask" not in p.stem)
    return np.stack([resize(read_image(p), spec) for p in files]), prepare_batch


def _setup(export, dataset, variant):
    from runtime.manifest import read_manifest
    from runtime.preprocessing import PreprocessSpec
    manifest = read_manifest(export)
    spec = PreprocessSpec.from_dict(manifest.preprocessing)
    images, prepare = _arrays(dataset, spec)
    model = onnx.load_model(str(export / manifest.variant(variant).file))
    return model, images, lambda x: prepare(list(x), spec).astype(np.float32)


def _probabilities(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["malignancy"], {session.get_inputs()[0].name: x})[0].reshape(-1)


def _reference(model, x):
    from runtime.site_adapt import conv_moments, find_convs
    return conv_moments(model, x, find_convs(model), threads=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_home_images_themselves_change_nothing(tiny_export, tiny_dataset, variant):
    from runtime.site_adapt import fit
    model, images, prepare = _setup(tiny_export, tiny_dataset, variant)
    x = prepare(images)
    before = _probabilities(model, x)
    align = fit(model, _reference(model, x), x, "all", threads=1)
    assert len(align) == 13
    # INT8: a layer's input is quantized again after the layers before it moved by a hair
    # (rounding flips add up to 0.02 of a channel's spread by block 5 of the tiny model)
    tolerance = 1e-3 if variant == "onnx-fp32" else 5e-2
    for a in align.values():
        assert np.allclose(a.scale, 1, atol=tolerance)
    assert np.abs(_probabilities(model, x) - before).max() < tolerance


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_fold_is_the_affine_change_of_each_channel(tiny_export, tiny_dataset, variant):
    """After folding a correction into the first conv, its output is exactly scale * z +
    shift of the output before; an INT8 file keeps its int8 kernels byte for byte."""
    from onnx import numpy_helper
    from runtime.site_adapt import Alignment, conv_moments, find_convs, fold
    from runtime.site_adapt import _tapped_session
    model, images, prepare = _setup(tiny_export, tiny_dataset, variant)
    x = prepare(images[:6])
    conv = find_convs(model)[0]
    channels = conv_moments(model, x, [conv], 1)[conv.name][0].size
    rng = np.random.default_rng(0)
    align = Alignment(rng.uniform(0.5, 2.0, channels).astype(np.float32), rng.normal(0, 3, channels).astype(np.float32))
    kernels = {i.name: i.raw_data for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}

    def output(m):
        session = _tapped_session(m, [conv.output], 1)
        return session.run([conv.output], {session.get_inputs()[0].name: x})[0]
    before = output(model)
    fold(model, conv, align)
    after = output(model)
    expected = before * align.scale[None, :, None, None] + align.shift[None, :, None, None]
    tolerance = 1e-4 if variant == "onnx-fp32" else 1e-3      # int32 bias rounding
    assert np.abs(after - expected).max() < tolerance * (1 + np.abs(expected).max())
    assert {i.name: i.raw_data for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8} == kernels
    if conv.quantized:
        assert numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == conv.bias)).dtype == np.int32


@pytest.mark.parametrize("variant", VARIANTS)
def test_another_scanner_is_brought_back_to_the_reference(tiny_export, tiny_dataset, variant):
    """The site's scans are the same scans darker and flatter: after adapting, every conv's
    outputs on them have the reference's statistics, and the calls on them are nearer the
    calls on the originals."""
    from runtime.site_adapt import fit
    model, images, prepare = _setup(tiny_export, tiny_dataset, variant)
    home, site = prepare(images), prepare(np.clip(images * 0.55 + 30, 0, 255).astype(np.uint8))
    reference = _reference(model, home)
    p_home = _probabilities(model, home)
    gap_before = np.abs(_probabilities(model, site) - p_home).mean()
    fit(model, reference, site, "all", threads=1)
    adapted = _reference(model, site)
    # INT8: each layer's input is quantized after the layers before it moved, so its
    # statistics match to the quantization step, not exactly
    rtol = 1e-3 if variant == "onnx-fp32" else 0.05
    for name, (m_ref, s_ref) in reference.items():
        m_site, s_site = adapted[name]
        assert np.allclose(m_site, m_ref, atol=rtol * (1 + np.abs(m_ref).max()))
        assert np.allclose(s_site, s_ref, rtol=rtol, atol=rtol * (1 + s_ref.max()) * 0.1)
    gap_after = np.abs(_probabilities(model, site) - p_home).mean()
    assert gap_before > 0.02 and gap_after < 0.5 * gap_before


def test_export_writes_the_reference_bound_to_each_file(tiny_export):
    from runtime.manifest import read_manifest
    from runtime.model_files import sha256_file
    from runtime.site_adapt import REFERENCE_NAME, read_reference
    doc = json.loads((tiny_export / REFERENCE_NAME).read_text())
    manifest = read_manifest(tiny_export)
    assert set(doc["variants"]) == set(VARIANTS) and doc["images"] > 0
    for name in VARIANTS:
        entry = manifest.variant(name)
        assert doc["variants"][name]["sha256"] == sha256_file(tiny_export / entry.file) == entry.sha256
        stats = read_reference(tiny_export, name, tiny_export / entry.file)
        assert len(stats) == 13 and all((s > 0).all() for _, s in stats.values())


@pytest.mark.slow
def test_adapt_command_writes_an_export_the_runtime_serves(tiny_export, tiny_dataset, tmp_path, capsys):
    from bcd.cli import main
    from runtime.classifier import Classifier
    from runtime.manifest import read_manifest
    from runtime.model_files import sha256_file
    source = tmp_path / "export"
    shutil.copytree(tiny_export, source)
    (source / "MODEL_CARD.md").write_text("the parent's card\n")
    out = tmp_path / "adapted"
    assert main(["adapt", str(source), "--data", str(tiny_dataset), "--out", str(out), "--layers", "all"]) == 0
    assert "adapted export written" in capsys.readouterr().out
    parent, manifest = read_manifest(source), read_manifest(out)
    record = manifest.training_data["site_adaptation"]
    assert record["site_scans"] == 20 and record["layers_aligned"] == 13 and record["parent"] == str(source)
    assert manifest.threshold == parent.threshold
    assert not (out / "MODEL_CARD.md").exists() and not (out / "adapt-reference.json").exists()
    for name in VARIANTS:
        entry = manifest.variant(name)
        assert entry.sha256 == sha256_file(out / entry.file) != parent.variant(name).sha256
    files = sorted(str(p) for p in tiny_dataset.rglob("*.png"))[:4]
    assert main(["predict", files[0], "--model", str(out)]) == 0
    assert "model is site-adapted to 20 unlabelled scans of one site" in capsys.readouterr().err
    from runtime.report import model_facts
    for export, adapted in ((out, True), (source, False)):
        with Classifier.load(export) as clf:
            assert ("site-adapted to 20 unlabelled scans" in model_facts(clf).adapted) == adapted
    for name in VARIANTS:
        with Classifier.load(out, variant=name) as adapted:
            predictions = adapted.predict(files)
        assert all(p.error is None and 0 <= p.probability <= 1 for p in predictions)
    # where a person sees the model (the demo's summary), it says it is adapted; the parent does not
    pytest.importorskip("gradio")
    from demo import views
    from demo.config import DemoConfig
    from demo.service import DemoService
    for export, adapted in ((out, True), (source, False)):
        service = DemoService(DemoConfig(model=export, threads=1))
        try:
            summary = views.model_summary_markdown(service)
        finally:
            service.close()
        assert ("site-adapted to 20 unlabelled scans of one site" in summary) == adapted
    # an adapted export is not adapted again: its parent is
    assert main(["adapt", str(out), "--data", str(tiny_dataset), "--out", str(tmp_path / "again")]) == 2
    assert "already adapted" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_adapt_export_refuses_plainly(tiny_export, tiny_dataset, tmp_path, capsys):
    from bcd.cli import main
    from tests.conftest import few_scans
    few = few_scans(tiny_dataset, tmp_path / "few")
    assert main(["adapt", str(tiny_export), "--data", str(few), "--out", str(tmp_path / "a")]) == 2
    assert "give at least 20" in capsys.readouterr().err and not (tmp_path / "a").exists()
    bare = tmp_path / "bare"
    shutil.copytree(tiny_export, bare)
    (bare / "adapt-reference.json").unlink()
    assert main(["adapt", str(bare), "--data", str(tiny_dataset), "--out", str(tmp_path / "b")]) == 2
    assert "has no adapt-reference.json" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["adapt", "no-such-model", "--data", str(few), "--out", str(tmp_path / "c")]) == 2
    assert "nor a shipped model" in capsys.readouterr().err


def test_an_adapted_int8_file_keeps_its_integer_convs(tiny_export, tiny_dataset, tmp_path):
    """The adapted file runs as fast as its parent only if ONNX Runtime still fuses every
    dequantize-conv-quantize into one integer conv: the bias scale must stay input scale x
    weight scale. Counted in the graph ONNX Runtime optimizes, not timed."""
    from runtime.site_adapt import fit
    model, images, prepare = _setup(tiny_export, tiny_dataset, "onnx-int8")
    x = prepare(images)
    dark = prepare(np.clip(images * 0.55 + 30, 0, 255).astype(np.uint8))

    def fused(m, name):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load_model(str(tmp_path / f"{name}.onnx")).graph.node]
        return ops.count("QLinearConv"), ops.count("Conv")
    before = fused(model, "parent")
    fit(model, _reference(model, x), dark, "all", threads=1)
    assert before[0] == 13 and fused(model, "adapted") == before


def test_weights_not_quantized_per_output_channel_are_refused(tiny_export, tiny_dataset):
    """A scale per input channel (DequantizeLinear's default axis, 1) cannot take a
    correction per output channel: refused, not folded wrongly."""
    from runtime.site_adapt import AdaptError, find_convs
    model, _, _ = _setup(tiny_export, tiny_dataset, "onnx-int8")
    weight = find_convs(model)[0].weight
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] == weight)
    for attribute in list(dq.attribute):
        if attribute.name == "axis":
            dq.attribute.remove(attribute)
    with pytest.raises(AdaptError, match="not quantized per output channel"):
        find_convs(model)
