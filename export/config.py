"""What `bcd export` produces and with which settings: the variant table and one
dataclass of options (the library entry point takes it; the CLI only fills it in)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from runtime.manifest import INT8_WEIGHT_KINDS

CAM_OUTPUTS = ("malignancy", "cam")
PROB_ONLY = ("malignancy",)


@dataclass(frozen=True)
class VariantSpec:
    name: str
    format: str            # onnx | tflite
    precision: str         # fp32 | fp16 | int8 | dynamic-int8
    outputs: tuple[str, ...]
    qat: bool = False
    notes: tuple[str, ...] = ()
    sparse: bool = False   # built from the magnitude-pruned model (--sparsity)

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.format}"


VARIANTS: dict[str, VariantSpec] = {v.name: v for v in (
    VariantSpec("onnx-fp32", "onnx", "fp32", CAM_OUTPUTS,
                notes=("reference conversion (tf2onnx); the other ONNX variants start from it",)),
    VariantSpec("onnx-int8", "onnx", "int8", CAM_OUTPUTS,
                notes=("static post-training quantization, QDQ format, uint8 activations and per-channel "
                       "weights (--int8-weights), calibrated on training images",)),
    VariantSpec("onnx-fp16", "onnx", "fp16", CAM_OUTPUTS,
                notes=("for GPUs/accelerators; CPUs run FP16 slowly (ONNX Runtime's CPU provider "
                       "lacks FP16 kernels for most ops and inserts casts): prefer onnx-fp32 or "
                       "onnx-int8 on clinic PCs", "inputs and outputs stay float32")),
    VariantSpec("tflite-fp32", "tflite", "fp32", CAM_OUTPUTS),
    VariantSpec("tflite-fp16", "tflite", "fp16", CAM_OUTPUTS,
                notes=("FP16 weights, dequantized to FP32 at load time on CPUs: half the file, FP32 speed",)),
    VariantSpec("tflite-dynamic", "tflite", "dynamic-int8", CAM_OUTPUTS,
                notes=("dynamic-range quantization: int8 weights, activations quantized on the fly; "
                       "no calibration data",)),
    VariantSpec("tflite-int8", "tflite", "int8", CAM_OUTPUTS,
                notes=("full-integer quantization calibrated on training images; float32 input and output",)),
    VariantSpec("onnx-int8-qat", "onnx", "int8", PROB_ONLY, qat=True,
                notes=("quantization-aware fine-tuned model converted by tf2onnx (QDQ); weights folded "
                       "to int8 with ONNX Runtime's basic graph optimizations; probability output only",)),
    VariantSpec("tflite-int8-qat", "tflite", "int8", PROB_ONLY, qat=True,
                notes=("quantization-aware fine-tuned model, full-integer; probability output only",)),
)}

DEFAULT_FORMATS = tuple(name for name, v in VARIANTS.items() if not v.qat)
QAT_FORMATS = tuple(name for name, v in VARIANTS.items() if v.qat)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_WEIGHT_CHOICES = ("auto",) + INT8_WEIGHT_KINDS

SPARSE_NOTE = ("unstructured magnitude pruning (tensorflow-model-optimization): smaller COMPRESSED file only; "
               "ONNX Runtime's dense CPU kernels multiply the zeros, so it is NOT faster and its raw file is "
               "as large as the dense one's")


def sparse_variants(sparsity: float) -> list[VariantSpec]:
    """The variants of the magnitude-pruned model, named after the sparsity in percent
    (0.5 -> onnx-fp32-sparse50, onnx-int8-sparse50)."""
    pct = round(sparsity * 100)
    return [
        VariantSpec(f"onnx-fp32-sparse{pct}", "onnx", "fp32", CAM_OUTPUTS, sparse=True, notes=(SPARSE_NOTE,)),
        VariantSpec(f"onnx-int8-sparse{pct}", "onnx", "int8", CAM_OUTPUTS, sparse=True,
                    notes=(SPARSE_NOTE, "static post-training quantization of the sparse model, like onnx-int8 "
                           "(zero weights stay zero)")),
    ]


@dataclass(frozen=True)
class ExportConfig:
    run_dir: str
    out: str
    formats: tuple[str, ...] = DEFAULT_FORMATS
    calib_data: object = None              # labelled dataset (path or runtime.dataset.DataSource); None: the run's training split
    calib_size: int = 200                  # calibration images (at most)
    calib_method: str = "minmax"
    qat_epochs: int = 0                    # > 0: also export the QAT variants
    qat_learning_rate: float = 1e-5
    qat_batch_size: int = 16
    parity_data: object = None             # labelled dataset (path or DataSource); None: the run's validation split
    max_auc_drop: float = 0.01
    max_flip_rate: float = 0.02
    onnx_opset: int = 17
    # How onnx-int8 stores its weights (export/onnx_convert.py, INT8_WEIGHTS): "7bit" (int8
    # in 7 bits, the fastest), "uint8" (all 8 bits, exact on every CPU, slower), or "auto":
    # 7bit, quantized again with uint8 when the 7-bit file fails the parity checks.
    int8_weights: str = "auto"
    calib_batch_size: int = 8
    batch_size: int = 16                   # inference batch for parity checks
    seed: int = 0
    sparsity: float = 0.0                  # > 0: also export magnitude-pruned variants with this share of zeros
    sparsity_epochs: int = 2               # fine-tuning epochs while pruning
    sparsity_learning_rate: float = 1e-5
    ood: bool = True                       # add the out-of-distribution score (export/ood.py)
    ood_quantile: float = 0.99             # flag threshold: this quantile of the validation scores
    ood_layers: tuple[str, ...] = ("block3_pool", "gap")   # whose pooled activations the score uses

    def __post_init__(self) -> None:
        formats = tuple(dict.fromkeys(self.formats))  # de-duplicate, keep order
        unknown = [f for f in formats if f not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if not formats and self.qat_epochs <= 0:
            raise ValueError("no formats to export")
        if self.qat_epochs < 0:
            raise ValueError("--qat EPOCHS must be 0 (off) or more")
        qat_listed = [f for f in formats if VARIANTS[f].qat]
        if qat_listed and self.qat_epochs <= 0:
            raise ValueError(f"{', '.join(qat_listed)} need quantization-aware training: add --qat EPOCHS (e.g. --qat 2)")
        if self.qat_epochs > 0 and not qat_listed:
            formats = formats + QAT_FORMATS
        object.__setattr__(self, "formats", formats)
        if self.int8_weights not in INT8_WEIGHT_CHOICES:
            raise ValueError(f"--int8-weights must be one of {', '.join(INT8_WEIGHT_CHOICES)}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}")
        if self.calib_size < 1 or self.calib_batch_size < 1 or self.batch_size < 1 or self.qat_batch_size < 1:
            raise ValueError("calibration size and batch sizes must be at least 1")
        if not (0 <= self.max_auc_drop <= 1 and 0 <= self.max_flip_rate <= 1):
            raise ValueError("--max-auc-drop and --max-flip-rate must lie in 0..1")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"--sparsity must lie in 0..1 (0: off; e.g. 0.5), got {self.sparsity}")
        if 0.0 < self.sparsity < 0.01:
            raise ValueError(f"--sparsity {self.sparsity} is below 1%: give a fraction such as 0.5")
        object.__setattr__(self, "ood_layers", tuple(dict.fromkeys(self.ood_layers)))
        if self.ood and not self.ood_layers:
            raise ValueError("--ood-layers: name at least one layer (e.g. block3_pool,gap), or use --no-ood")
        if not 0.5 <= self.ood_quantile < 1.0:
            raise ValueError(f"--ood-quantile must lie in 0.5..1 (e.g. 0.99: about 1% false alarms), got {self.ood_quantile}")
        if self.sparsity > 0 and self.sparsity_epochs < 1:
            raise ValueError("--sparsity-epochs must be at least 1")

    @property
    def variants(self) -> list[VariantSpec]:
        extra = sparse_variants(self.sparsity) if self.sparsity > 0 else []
        return [VARIANTS[f] for f in self.formats] + extra

    def to_dict(self) -> dict:
        d = asdict(self)
        d["formats"] = list(self.formats)
        for key in ("calib_data", "parity_data"):
            value = getattr(self, key)
            d[key] = value.to_dict() if hasattr(value, "to_dict") else (str(value) if value is not None else None)
        d["ood_layers"] = list(self.ood_layers)
        return d
