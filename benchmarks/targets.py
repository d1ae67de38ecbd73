"""The models being benchmarked, behind one small interface.

* `KerasOriginal`: the run's model.keras in TensorFlow (tf-keras). Timed as
  `model(x, training=False)` (a direct call; `model.predict` adds per-call overhead of
  its own: tf.data input pipeline, callbacks, progress). Accuracy through
  `train.evaluate.predict_probabilities`, the function `bcd evaluate` uses.
* `RuntimeVariant`: an exported file on one engine (ONNX Runtime or OpenVINO for .onnx,
  LiteRT for .tflite), loaded by `runtime.classifier.Classifier`, the code clinics run
  (sha256 checked against the manifest; variants that failed the export's parity checks
  are loaded with force=True: they are benchmarked, and their export status is
  reported). Every engine of every variant is a row of its own; rows on an engine other
  than the format's first are named "<variant>@<engine>". Timed as the Classifier's own
  inference call (`classifier.backend.run`, the settings clinics get), on the same
  preprocessed input as Keras, in a process of its own
  (`benchmarks.backends.EngineInProcess`): engines never share a process. Accuracy
  through `Classifier.predict_decoded`, the full per-image path.

Preprocessing (`runtime.preprocessing`) is excluded from latency and throughput for
every engine alike; the cold-start probe includes it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.engines import ENGINES_OF_FORMAT, engine_label
from runtime.manifest import VariantEntry
from runtime.preprocessing import PreprocessSpec

log = logging.getLogger(__name__)

ORIGINAL_NAME = "keras-original"


def configure_tf_threads(threads: int) -> dict:
    """Fix TensorFlow's thread pools (intra-op = threads, inter-op = 1, like ONNX Runtime's
    sequential mode). Only possible before TensorFlow runs its first op; otherwise the
    pools stay as they are and the returned record says so."""
    from train.tf_setup import tf

    record = {"intra_op_requested": threads, "inter_op_requested": 1}
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        record["set"] = True
    except RuntimeError as err:
        record["set"] = False
        record["note"] = (f"TensorFlow was already initialised in this process, so its thread pools could not "
                          f"be changed ({err}); intra-op 0 means TensorFlow's default (all cores)")
        log.warning("TensorFlow thread pools already initialised; timings use its current settings")
    record["intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
    record["inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    return record


class Target:
    name: str = ""
    format: str = ""
    precision: str = ""
    engine: str = ""
    role: str = "variant"

    def __init__(self) -> None:
        self.file: Path | None = None
        self.notes: list[str] = []
        self.group: str | None = None          # label of the export this row belongs to
        self.export_dir: Path | None = None

    def probe_args(self) -> dict:
        """Keyword arguments of benchmarks.probe.probe_command for this model."""
        raise NotImplementedError

    @property
    def file_bytes(self) -> int | None:
        return self.file.stat().st_size if self.file is not None and self.file.is_file() else None

    def load(self) -> None:
        raise NotImplementedError

    def infer(self, x: np.ndarray):
        """One inference on a preprocessed float32 NHWC batch (the timed call)."""
        raise NotImplementedError

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Probabilities of malignancy for resized uint8 BGR images."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class KerasOriginal(Target):
    name = ORIGINAL_NAME
    format = "keras"
    precision = "fp32"
    engine = "TensorFlow (tf-keras), model(x, training=False)"
    role = "original"

    def __init__(self, model_file: Path, spec: PreprocessSpec, run_dir: Path | None = None) -> None:
        super().__init__()
        self.file = Path(model_file)
        self.spec = spec
        self.run_dir = Path(run_dir) if run_dir is not None else self.file.parent
        self.model = None

    def probe_args(self) -> dict:
        return {"keras_run": self.run_dir}

    def load(self) -> None:
        from train.tf_setup import keras
        self.model = keras.models.load_model(self.file, compile=False)

    def infer(self, x):
        return self.model(x, training=False)

    def predict(self, images, batch_size):
        from train.evaluate import predict_probabilities
        return np.asarray(predict_probabilities(self.model, images, self.spec, batch_size), dtype=np.float64)

    def close(self) -> None:
        self.model = None


def engines_for(fmt: str) -> tuple[str, ...]:
    """The engines a variant of this format is benchmarked on: each the runtime can use
    and that is installed (OpenVINO is an extra)."""
    from runtime.backends import openvino_installed

    return tuple(e for e in ENGINES_OF_FORMAT.get(fmt, ("onnxruntime",))
                 if e != "openvino" or openvino_installed())


class RuntimeVariant(Target):
    def __init__(self, export_dir: Path, entry: VariantEntry, threads: int, backend: str | None = None) -> None:
        super().__init__()
        self.export_dir = Path(export_dir)
        self.entry = entry
        first = "onnxruntime" if entry.format == "onnx" else "litert"
        self.backend = backend or first
        self.name = entry.name if self.backend == first else f"{entry.name}@{self.backend}"
        self.format, self.precision = entry.format, entry.precision
        # ONNX Runtime and OpenVINO have other devices; here they run on the CPU
        self.engine = engine_label(self.backend) + (" (CPU)" if self.backend != "litert" else "")
        self.file = self.export_dir / entry.file if entry.file else None
        self.threads = threads
        self.classifier = None

    def load(self) -> None:
        from runtime.classifier import Classifier
        if self.entry.status == "error":
            raise RuntimeError(f"the export could not produce this variant: {self.entry.reason or 'no reason given'}")
        self.classifier = Classifier.load(self.export_dir, variant=self.entry.name, threads=self.threads, force=True,
                                          backend=self.backend)
        # The benchmark feeds dataset scans already resized to the model's input (32 px for
        # the test model): it measures the model, so the clinic-input checks
        # (runtime.input_checks, e.g. "at least 64 px") are not applied to them.
        self.classifier.input_checks = None
        precision = getattr(self.classifier.backend, "precision", None)
        self.engine += (f" ({precision} inference precision)" if precision else "") + \
            f", {self.classifier.threads} thread(s)"

    def probe_args(self) -> dict:
        return {"export_dir": self.export_dir, "variant": self.entry.name, "backend": self.backend}

    def in_own_process(self, x_file: Path, warmup: int):
        """A SelfTimed target: timed in a process of its own (see the module docstring)."""
        from benchmarks.backends import EngineInProcess
        return EngineInProcess(self.export_dir, self.entry.name, self.backend, self.threads, x_file, warmup)

    def infer(self, x):
        return self.classifier.backend.run(x, False)

    def predict(self, images, batch_size):
        probs = []
        for start in range(0, len(images), batch_size):
            preds = self.classifier.predict_decoded(list(images[start:start + batch_size]))
            bad = [p.error for p in preds if p.error]
            if bad:
                raise RuntimeError(bad[0])
            probs.extend(p.probability for p in preds)
        return np.asarray(probs, dtype=np.float64)

    def close(self) -> None:
        if self.classifier is not None:
            self.classifier.close()
        self.classifier = None
