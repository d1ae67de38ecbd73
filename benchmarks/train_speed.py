"""Training speed, float32 against mixed bfloat16, on this machine.

`python -m benchmarks.train_speed [--image-size 128] [--width 0.5] [--arch vgg16-bn] [--rounds 3]`

Each measurement is a fresh process (TensorFlow's thread pools and its one global dtype
policy do not mix within one process) that builds the project's model (train.model) on
random data, trains one warm-up epoch, then times `--steps` steps of batch 16. Rounds
alternate the two precisions, so a busy period of a shared machine hits both; the
median images/s per precision and their ratio are printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CHILD = "--child"


def _child(args) -> None:
    import numpy as np

    from train.model import ModelConfig, build_model
    from train.precision import apply_precision
    from train.tf_setup import keras

    apply_precision(args.precision)
    config = ModelConfig(args.image_size, "none", batch_norm=args.arch == "vgg16-bn", width=args.width)
    model, _ = build_model(config)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.uniform(-120, 130, (n, args.image_size, args.image_size, 3)).astype("float32")
    y = rng.integers(0, 2, n).astype("float32")
    model.fit(x[:args.batch_size * 2], y[:args.batch_size * 2], batch_size=args.batch_size, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    print(json.dumps({"images_per_second": n / (time.perf_counter() - start)}))


def _measure(args, precision: str) -> float:
    cmd = [sys.executable, "-m", "benchmarks.train_speed", CHILD, "--precision", precision,
           "--image-size", str(args.image_size), "--width", str(args.width), "--arch", args.arch,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--arch", choices=["vgg16", "vgg16-bn"], default="vgg16-bn")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    from runtime.host import cpu_flag_set
    from train.precision import resolve_precision
    speeds: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for r in range(args.rounds):
        for precision in (("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")):
            speeds[precision].append(_measure(args, precision))
            print(f"round {r + 1}: {precision} {speeds[precision][-1]:.1f} images/s", file=sys.stderr)
    median = {k: statistics.median(v) for k, v in speeds.items()}
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "precision", "out")},
              "native_bf16_flags": sorted(cpu_flag_set() & {"avx512_bf16", "amx_bf16"}),
              "auto_picks": resolve_precision("auto"), "images_per_second": speeds,
              "median_images_per_second": median, "bfloat16_speedup": median["bfloat16"] / median["float32"]}
    print(json.dumps(result, indent=2))
    if args.out:
        from runtime import atomic
        atomic.write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
