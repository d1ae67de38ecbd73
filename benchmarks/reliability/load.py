"""Load on the demo: `bcd demo` in its own process on 127.0.0.1, N concurrent clients
(gradio_client) x M requests each, real images; every answer is checked against the
runtime's own prediction for that image.

    python -m benchmarks.reliability.load [--clients 20] [--requests 10] [--model EXPORT] [--images DIR]

Prints the request count, errors (must be 0), latency p50/p95/max, and the server
process's peak resident memory (VmHWM) before and after the load. The excess-load check
(a full queue refuses with a message) is tests/demo/test_demo.py::test_a_full_queue_refuses_excess_load_with_a_message.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.child import checkout_env
from runtime.host import peak_rss_mib

REPO = Path(__file__).resolve().parents[2]
BUSI = REPO.parent / "shared" / "data" / "busi"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bcd demo exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError("bcd demo did not start listening")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability.load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="requests per client")
    parser.add_argument("--model", type=Path, help="export directory (default: the shipped reference model)")
    parser.add_argument("--images", type=Path, default=BUSI, help="folder of images (default: BUSI)")
    parser.add_argument("--concurrency", type=int, default=2, help="the demo's workers (default 2, as bcd demo)")
    args = parser.parse_args(argv)

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio_client

    from runtime.classifier import Classifier
    from runtime.dataset import scan_folder
    from runtime.shipped import default_model_path

    model = args.model or default_model_path()
    images = [e.path for e in scan_folder(args.images).entries][:10]
    with Classifier.load(model, threads=1) as clf:
        expected = {str(p): clf.predict(p).probability for p in images}
        variant = clf.variant
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bcd.cli", "demo", "--model", str(model), "--port", str(port),
                               "--concurrency", str(args.concurrency)], cwd=REPO,
                              env=checkout_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, server)
        url = f"http://127.0.0.1:{port}/"
        warm = gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)
        warm.predict(gradio_client.handle_file(str(images[0])), variant, api_name="/classify")
        idle_mb = peak_rss_mib(server.pid)
        latencies, errors, lock = [], [], threading.Lock()

        def user(k: int) -> None:
            client = gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)
            for i in range(args.requests):
                image = images[(k + i) % len(images)]
                t0 = time.monotonic()
                try:
                    out = client.predict(gradio_client.handle_file(str(image)), variant, api_name="/classify")[3]
                    ok = out["error"] is None and abs(out["probability"] - expected[str(image)]) < 1e-6
                    problem = None if ok else f"{image.name}: {out['error'] or out['probability']}"
                except Exception as err:  # noqa: BLE001 - counted
                    problem = f"{err.__class__.__name__}: {err}"
                with lock:
                    latencies.append(time.monotonic() - t0)
                    if problem:
                        errors.append(problem)

        started = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(user, range(args.clients)))
        seconds = time.monotonic() - started
        ordered = sorted(latencies)
        pick = lambda q: ordered[int(q * (len(ordered) - 1))]  # noqa: E731
        print(f"`python -m benchmarks.reliability.load --clients {args.clients} --requests {args.requests}` "
              f"(model {Path(model).name}, variant {variant}, {args.concurrency} workers)\n")
        print(f"- requests: {len(latencies)} from {args.clients} concurrent clients in {seconds:.1f} s; "
              f"errors: {len(errors)}")
        print(f"- latency per request (upload + queue + decode + inference + Grad-CAM + response): "
              f"p50 {pick(0.5) * 1000:.0f} ms, p95 {pick(0.95) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")
        print(f"- server peak RSS: {peak_rss_mib(server.pid):.0f} MB under load "
              f"({idle_mb:.0f} MB after start-up and one request)")
        for e in errors[:10]:
            print(f"  error: {e}")
        return 1 if errors else 0
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    raise SystemExit(main())
