"""The lesion localiser (issue 21): proposes the lesion box when none is drawn.

    from runtime.localiser import Localiser
    loc = Localiser.load("exports/busi-128")     # None: this export has no localiser
    heat = loc.lesion_map(crop)                  # (h, w) float32 0..1 at crop's size
    box = loc.propose(crop)                      # runtime.lesion_box.Box, or None
    loc.threshold, loc.margin                    # chosen on the validation split

A small segmentation network of its own (train/localiser.py), shipped as one ONNX file
in an export directory and described by the manifest's "localiser" section
(runtime.manifest.LocaliserEntry). It reads what the classifier reads: the image cut to
its scan region (Prediction.region; the localiser learnt from the same crops), prepared
by runtime.preprocessing; its map covers that image, so a box it proposes is in that
image's pixels (move it into the whole picture with Box.shifted(region.x, region.y)).
`Classifier.localiser = Localiser.load(export_dir)` makes predict(..., roi="auto") ask it
for the box (runtime.roi), with the same threshold and margin as `propose`.

Safety on load as for the classifier (runtime/model_files.py): the file must lie inside
the export directory, its sha256 must match the manifest, ONNX external data must stay
beside it. ONNX Runtime + numpy + OpenCV only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from runtime.lesion_box import Box
from runtime.lesion_scores import proposed_box
from runtime.manifest import LocaliserEntry, manifest_path, read_manifest
from runtime.model_files import ModelLoadError, check_onnx_external_data, inside, refuse_unsafe_file, sha256_bytes
from runtime.preprocessing import PreprocessSpec, prepare_batch
from runtime.session import create_session, resolve_threads


def map_to_image(raw: np.ndarray, height: int, width: int) -> np.ndarray:
    """A lesion map at the network's output size -> (height, width) float32 in 0..1
    (bilinear: the network saw the image squashed to a square, so stretching the map back
    puts each cell over the pixels it came from)."""
    values = np.nan_to_num(np.asarray(raw, dtype=np.float32).squeeze(), nan=0.0)
    if values.ndim != 2:
        raise ValueError(f"expected one (h, w) lesion map, got shape {np.shape(raw)}")
    return np.clip(cv2.resize(values, (int(width), int(height)), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


class Localiser:
    """A loaded localiser: an ONNX Runtime session and its manifest entry."""

    def __init__(self, session, entry: LocaliserEntry, file: Path):
        self.session, self.entry, self.file = session, entry, file
        self.spec = PreprocessSpec.from_dict(entry.preprocessing)
        self.threshold = float(entry.threshold)
        self.margin = float(entry.margin)
        self._check_graph()

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, verify: bool = True) -> "Localiser | None":
        """The localiser of an export directory (or its manifest.json); None when the
        manifest describes none. ModelLoadError for a file that must not be run (sha256
        mismatch, outside the export directory); FileNotFoundError for a missing file."""
        manifest_file = manifest_path(path)
        entry = read_manifest(manifest_file).localiser
        if entry is None:
            return None
        export_dir = manifest_file.parent
        try:
            file = inside(export_dir, entry.file)
        except ModelLoadError as err:
            raise ModelLoadError(f"{manifest_file}: localiser: {err}") from None
        refuse_unsafe_file(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: localiser file listed in {manifest_file} is missing")
        data = file.read_bytes()
        if verify and sha256_bytes(data).lower() != entry.sha256.lower():
            raise ModelLoadError(f"{file}: sha256 mismatch: the manifest says {entry.sha256}, the file has "
                                 f"{sha256_bytes(data)}. The file was changed or damaged after export; export the "
                                 "localiser again (bcd localiser RUN --export DIR)")
        check_onnx_external_data(data, file.parent, file.name)
        try:
            session = create_session(data, file.parent, resolve_threads(threads))
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises several types
            raise ModelLoadError(f"{file}: ONNX Runtime cannot load the localiser ({err.__class__.__name__}: {err})") \
                from None
        return cls(session, entry, file)

    def _check_graph(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [self.entry.input] or self.entry.output not in outputs:
            raise ModelLoadError(f"{self.file}: the localiser's graph has inputs {inputs} and outputs {outputs}; "
                                 f"the manifest says {self.entry.input!r} -> {self.entry.output!r}")

    # ------------------------------------------------------------------ maps and boxes

    def raw_maps(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, h, w) lesion probabilities at the network's output size for BGR uint8 images."""
        for image in images:
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise ValueError(f"the localiser needs HxWx3 uint8 BGR images, got {what}")
        if not len(images):
            return np.zeros((0, *self.entry.output_size), np.float32)
        x = prepare_batch(list(images), self.spec)
        out = self.session.run([self.entry.output], {self.entry.input: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(images), *self.entry.output_size)

    def lesion_maps(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """lesion_map of several images, run as one batch."""
        return [map_to_image(raw, *image.shape[:2]) for raw, image in zip(self.raw_maps(images), images)]

    def lesion_map(self, image: np.ndarray) -> np.ndarray:
        """(h, w) float32 lesion probabilities 0..1 at the image's own size (the image as
        the classifier reads it: BGR uint8, cut to its scan region)."""
        return self.lesion_maps([image])[0]

    def propose(self, image: np.ndarray) -> Box | None:
        """The proposed lesion box in the image's pixels, as roi="auto" would classify it
        (runtime.lesion_scores.proposed_box; None: nothing reaches the threshold)."""
        return proposed_box(self.lesion_map(image), self.threshold, self.margin)

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> "Localiser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Localiser(file={str(self.file)!r}, input={self.spec.image_size}, "
                f"output={self.entry.output_size}, threshold={self.threshold:.2f})")
