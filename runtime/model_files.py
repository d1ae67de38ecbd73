"""Safety checks on model files, before any of them reaches an inference engine.

- Only ONNX and TFLite files are run. Keras (.keras, .h5), TensorFlow SavedModel (.pb)
  and pickle files are refused: they can carry code (Lambda layers, pickled objects)
  that runs when they are loaded.
- The sha256 the manifest records for a file must match the bytes on disk.
- An ONNX file may keep tensors in "external data" files. Their locations must be
  relative paths that stay inside the model's folder (after following symlinks):
  otherwise a crafted model could read any file on the PC (and leak it through its
  outputs). Recent ONNX Runtime (1.32 here) checks this itself; the check here also
  protects installs older than that check and gives one clear message. It walks the protobuf wire format directly,
  because the runtime does not depend on the `onnx` package.

Stdlib only.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

ONNX_SUFFIX = ".onnx"
TFLITE_SUFFIX = ".tflite"
MODEL_SUFFIXES = (ONNX_SUFFIX, TFLITE_SUFFIX)

_CODE_CARRYING = {
    ".keras": "a Keras model",
    ".h5": "a Keras/HDF5 model",
    ".hdf5": "a Keras/HDF5 model",
    ".pb": "a TensorFlow SavedModel/graph",
    ".pbtxt": "a TensorFlow graph",
    ".pkl": "a pickle",
    ".pickle": "a pickle",
    ".joblib": "a joblib pickle",
    ".pt": "a PyTorch pickle",
    ".pth": "a PyTorch pickle",
    ".npy": "a NumPy array (may hold pickles)",
    ".npz": "a NumPy archive (may hold pickles)",
}


class ModelLoadError(ValueError):
    """A model can't (or must not) be loaded; the message says why, for a user."""


def refuse_unsafe_file(path: Path) -> None:
    """Raise ModelLoadError for file types that can execute code when loaded."""
    what = _CODE_CARRYING.get(path.suffix.lower())
    if what is not None:
        raise ModelLoadError(
            f"{path}: refusing to load {what} ({path.suffix} files can contain code that runs "
            "when they are loaded). The runtime only runs exported .onnx/.tflite models: "
            "run `bcd export` on the training run and load the export directory."
        )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compressed_size(path_or_bytes: "Path | bytes") -> int:
    """Bytes of the file gzip-compressed (level 6, no timestamp): what a download costs,
    and where unstructured sparsity shows (zeros compress, the raw file does not shrink)."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return len(gzip.compress(data, compresslevel=6, mtime=0))


def inside(folder: Path, relative: str) -> Path:
    """Resolve `relative` below `folder`; ModelLoadError if it is absolute or escapes it
    (through '..' or a symlink)."""
    if not relative or os.path.isabs(relative) or Path(relative).is_absolute() or "\\" in relative:
        raise ModelLoadError(f"{relative!r} is not a plain relative path inside {folder}")
    base = folder.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise ModelLoadError(f"{relative!r} points outside {folder} (resolves to {target})")
    return target


# --------------------------------------------------------------- ONNX external data
#
# Protobuf wire format: each field is a varint key (field_number << 3 | wire_type) then a
# varint (type 0), 8 bytes (1), a varint length + bytes (2) or 4 bytes (5). Only the
# messages that can contain a TensorProto are descended into; field numbers come from
# onnx.proto.

_MODEL_GRAPH, _MODEL_METADATA, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 14, 20, 25
_TRAINING_GRAPHS = (1, 2)                      # initialization, algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO = 7, 11
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_MAX_DEPTH = 64


class _ProtoError(ValueError):
    pass


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _ProtoError("truncated or overlong varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _string_entry(buf: memoryview, start: int, end: int) -> tuple[str | None, str | None]:
    """The key and value of a StringStringEntryProto (used for metadata and external data)."""
    key = value = None
    for n, w, ks, ke in _fields(buf, start, end):
        if w == 2 and n == _ENTRY_KEY:
            key = bytes(buf[ks:ke]).decode("utf-8", "replace")
        elif w == 2 and n == _ENTRY_VALUE:
            value = bytes(buf[ks:ke]).decode("utf-8", "replace")
    return key, value


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field_number, wire_type, value_start, value_end) of one message."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, j = _varint(buf, i, end)
        elif wire == 1:
            j = i + 8
        elif wire == 2:
            length, i = _varint(buf, i, end)
            j = i + length
        elif wire == 5:
            j = i + 4
        else:  # groups (3, 4) are not used by ONNX
            raise _ProtoError(f"unsupported wire type {wire}")
        if j > end:
            raise _ProtoError("field runs past the end of its message")
        yield number, wire, i, j
        i = j


def _submessages(buf, start, end, numbers):
    for number, wire, s, e in _fields(buf, start, end):
        if wire == 2 and number in numbers:
            yield number, s, e


def _tensor_locations(buf, start, end, out: list[tuple[str, str]]) -> None:
    name = ""
    locations = []
    for number, wire, s, e in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _TENSOR_NAME:
            name = bytes(buf[s:e]).decode("utf-8", "replace")
        elif number == _TENSOR_EXTERNAL_DATA:
            key, value = _string_entry(buf, s, e)
            if key == "location" and value is not None:
                locations.append(value)
    out.extend((name, loc) for loc in locations)


def _sparse(buf, start, end, out) -> None:
    for _, s, e in _submessages(buf, start, end, (_SPARSE_VALUES, _SPARSE_INDICES)):
        _tensor_locations(buf, s, e, out)


def _attribute(buf, start, end, out, depth) -> None:
    for number, s, e in _submessages(buf, start, end, (_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS,
                                                       _ATTR_SPARSE, _ATTR_SPARSES)):
        if number in (_ATTR_T, _ATTR_TENSORS):
            _tensor_locations(buf, s, e, out)
        elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
            _sparse(buf, s, e, out)
        else:
            _graph(buf, s, e, out, depth + 1)


def _nodes(buf, start, end, out, depth, node_field) -> None:
    for _, s, e in _submessages(buf, start, end, (node_field,)):
        for _, a_s, a_e in _submessages(buf, s, e, (_NODE_ATTRIBUTE,)):
            _attribute(buf, a_s, a_e, out, depth)


def _graph(buf, start, end, out, depth) -> None:
    if depth > _MAX_DEPTH:
        raise _ProtoError("subgraphs nested too deeply")
    for number, s, e in _submessages(buf, start, end, (_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE)):
        if number == _GRAPH_INITIALIZER:
            _tensor_locations(buf, s, e, out)
        elif number == _GRAPH_SPARSE:
            _sparse(buf, s, e, out)
        else:
            for _, a_s, a_e in _submessages(buf, s, e, (_NODE_ATTRIBUTE,)):
                _attribute(buf, a_s, a_e, out, depth)


def onnx_external_data(model_bytes: bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor stored as external data, anywhere in the
    model: graph initializers, node attributes, subgraphs, functions, training info."""
    buf = memoryview(model_bytes)
    out: list[tuple[str, str]] = []
    try:
        for number, s, e in _submessages(buf, 0, len(buf), (_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS)):
            if number == _MODEL_GRAPH:
                _graph(buf, s, e, out, 0)
            elif number == _MODEL_TRAINING_INFO:
                for _, g_s, g_e in _submessages(buf, s, e, _TRAINING_GRAPHS):
                    _graph(buf, g_s, g_e, out, 0)
            else:
                _nodes(buf, s, e, out, 0, _FUNCTION_NODE)
                for _, a_s, a_e in _submessages(buf, s, e, (_FUNCTION_ATTRIBUTE_PROTO,)):
                    _attribute(buf, a_s, a_e, out, 0)
    except _ProtoError as err:
        raise ModelLoadError(f"not a valid ONNX model ({err})") from None
    return out


def onnx_metadata(model_bytes: bytes) -> dict[str, str]:
    """The model's metadata_props (key -> value), read without loading the model."""
    buf = memoryview(model_bytes)
    props: dict[str, str] = {}
    try:
        for _, s, e in _submessages(buf, 0, len(buf), (_MODEL_METADATA,)):
            key, value = _string_entry(buf, s, e)
            if key is not None:
                props[key] = value or ""
    except _ProtoError as err:
        raise ModelLoadError(f"not a valid ONNX model ({err})") from None
    return props


def check_onnx_external_data(model_bytes: bytes, model_dir: Path, name: str = "model") -> list[Path]:
    """Raise ModelLoadError if any external data location is absolute or leaves
    `model_dir`; return the resolved external data files."""
    files = []
    for tensor, location in onnx_external_data(model_bytes):
        try:
            files.append(inside(model_dir, location))
        except ModelLoadError as err:
            raise ModelLoadError(
                f"{name}: refusing to load: tensor {tensor!r} keeps its data in an external file "
                f"that is not inside the model's folder ({err}). A model may only read data files "
                "that sit next to it."
            ) from None
    return files
