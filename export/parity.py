"""Does an exported file behave like the Keras model it came from?

Every variant runs on the same images as the original (the run's validation split, or a
labelled folder) through its real runtime, ONNX Runtime or LiteRT, loading the model as it
is saved (an ONNX model from its serialized bytes: the file adds only metadata). Compared
with the Keras probabilities:

* max |delta probability|;
* flip rate: share of images whose decision at the operating threshold changes
  (malignant iff prob >= threshold, the project-wide rule);
* ROC AUC of both (None when the images hold one class only) and the drop.

A variant fails when its AUC drop exceeds `max_auc_drop` or its flip rate exceeds
`max_flip_rate`. Grad-CAM maps are compared too (mean per-image Pearson r), for the
record only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.manifest import Parity

PROB = "malignancy"
CAM = "cam"


# --------------------------------------------------------------------------- runners

def run_onnx(model: Path | bytes, inputs: np.ndarray, batch_size: int = 16, input_name: str = "image"
             ) -> dict[str, np.ndarray]:
    """`model`: an .onnx file or a serialized ONNX model."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {input_name: inputs[i:i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}


def run_tflite(path: Path, inputs: np.ndarray, batch_size: int = 16, input_name: str = "image") -> dict[str, np.ndarray]:
    """LiteRT (ai-edge-litert), the interpreter a runtime-only install uses. The default
    signature maps output names ("malignancy", "cam") to arrays and resizes the batch."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    parts = [runner(**{input_name: inputs[i:i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def run_file(fmt: str, path: Path | bytes, inputs: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Every output of the model on `inputs` (ONNX: a file or serialized bytes; TFLite: a file)."""
    if fmt == "onnx":
        return run_onnx(path, inputs, batch_size)
    if fmt == "tflite":
        return run_tflite(path, inputs, batch_size)
    raise ValueError(f"unknown format {fmt!r}")


# --------------------------------------------------------------------------- comparison

def auc_or_none(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def cam_correlation(cam: np.ndarray, reference: np.ndarray) -> float | None:
    """Mean Pearson r over images whose maps both vary (a constant map has no r)."""
    rs = []
    for a, b in zip(cam.reshape(len(cam), -1), reference.reshape(len(reference), -1)):
        if a.std() > 0 and b.std() > 0:
            rs.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(rs)) if rs else None


def compare(prob: np.ndarray, reference: np.ndarray, labels: np.ndarray, threshold: float,
            cam: np.ndarray | None = None, reference_cam: np.ndarray | None = None) -> Parity:
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    if prob.shape != reference.shape:
        raise ValueError(f"{len(prob)} probabilities for {len(reference)} images")
    if not np.all(np.isfinite(prob)):
        raise ValueError("the variant produced non-finite probabilities")
    flips = (prob >= threshold) != (reference >= threshold)
    auc, auc_original = auc_or_none(labels, prob), auc_or_none(labels, reference)
    return Parity(
        max_abs_diff=float(np.max(np.abs(prob - reference))) if len(prob) else 0.0,
        flip_rate=float(flips.mean()) if len(prob) else 0.0,
        auc=auc,
        auc_original=auc_original,
        auc_drop=None if auc is None or auc_original is None else auc_original - auc,
        n=int(len(prob)),
        cam_correlation=(cam_correlation(cam, reference_cam)
                         if cam is not None and reference_cam is not None else None),
    )


@dataclass(frozen=True)
class Tolerance:
    max_auc_drop: float = 0.01
    max_flip_rate: float = 0.02

    def violations(self, parity: Parity) -> list[str]:
        problems = []
        if parity.auc_drop is not None and parity.auc_drop > self.max_auc_drop:
            problems.append(f"AUC drop {parity.auc_drop:.4f} > {self.max_auc_drop:g} "
                            f"({parity.auc_original:.4f} -> {parity.auc:.4f})")
        if parity.flip_rate > self.max_flip_rate:
            problems.append(f"flip rate {parity.flip_rate:.4f} > {self.max_flip_rate:g} "
                            f"({round(parity.flip_rate * parity.n)} of {parity.n} decisions changed)")
        return problems
