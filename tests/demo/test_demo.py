"""The Gradio demo (`demo/`, `bcd demo`): served for real on a loopback port and driven
with gradio_client and a headless Chromium.

The app runs in this process (prevent_thread_lock); every request goes over HTTP to
127.0.0.1 only. Bounded: the load test sends exactly 20 x 5 requests with timeouts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from demo.config import DemoConfig, parse_size  # noqa: E402  (no gradio import)
from runtime.host import DISCLAIMER  # noqa: E402
from tests.conftest import missing, needs_module  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
CHROMIUM = "/usr/bin/chromium"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# ---------------------------------------------------------------------- no Gradio needed


def test_importing_demo_loads_no_training_stack():
    code = ("import sys, demo, demo.app, demo.service, demo.views\n"
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', 'sklearn', 'torch') if m in sys.modules]\n"
            "import os\n"
            "assert os.environ['GRADIO_ANALYTICS_ENABLED'] == 'False', 'gradio analytics on'\n"
            "assert os.environ['ORT_DISABLE_TELEMETRY'] == '1', 'onnxruntime telemetry on'\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "ORT_DISABLE_TELEMETRY")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sizes_and_config_validation(tmp_path):
    assert parse_size("20MB") == 20 * 1024 ** 2
    assert parse_size("512kb") == 512 * 1024
    assert parse_size("1.5 GB") == int(1.5 * 1024 ** 3)
    assert parse_size(1000) == 1000
    for bad in ("twenty", "-1MB", "0", "5 TB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    config = DemoConfig(model=tmp_path)
    assert (config.host, config.port, config.share, config.concurrency) == ("127.0.0.1", 7860, False, 2)
    assert config.max_file_size_bytes == 20 * 1024 ** 2 and config.loopback_only
    assert not DemoConfig(model=tmp_path, host="0.0.0.0").loopback_only
    with pytest.raises(ValueError):
        DemoConfig(model=tmp_path, max_file_size="lots")
    with pytest.raises(ValueError):
        DemoConfig(model=tmp_path, concurrency=0)


def test_views_escape_and_keep_numbers_consistent():
    from demo import views
    from demo.service import Outcome

    assert views.fmt_prob_pair(0.409, 0.41) == ("0.409", "0.410")
    assert views.fmt_prob_pair(0.73, 0.41) == ("0.73", "0.41")
    assert views.fmt_prob_pair(0.41, 0.41) == ("0.41", "0.41")
    evil = '<img src=x onerror="alert(1)">${x}`.png'
    page = views.error_html(evil, f"{evil}: not a readable image")
    assert "<img src=x" not in page and "${" not in page and "`" not in page
    ok = Outcome(file=evil, variant="onnx-fp32", label="malignant", probability=0.73, threshold=0.41,
                 seconds=0.012, total_seconds=0.03, threads=2)
    card = views.result_html(ok)
    assert "<img src=x" not in card
    assert "probability 0.73 &mdash; threshold 0.41 &rarr; <b>above</b>: malignant-looking" in card
    assert views.DISCLAIMER in card and "Malignant-looking" in card
    low = Outcome(file="a.png", variant="v", label="benign", probability=0.2, threshold=0.41, seconds=0.01,
                  total_seconds=0.02, threads=1)
    assert "<b>below</b>: benign-looking" in views.result_html(low)
    assert views.DISCLAIMER in views.placeholder_html()


def test_examples_stay_inside_their_folder(tmp_path):
    from demo.service import list_examples

    root = tmp_path / "examples"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    for name in ("a.png", "sub/b.jpg", "a_mask.png", "notes.txt"):
        (root / name).write_bytes(b"x")
    (root / "link.png").symlink_to(outside)
    found = [p.relative_to(root).as_posix() for p in list_examples(root)]
    assert found == ["a.png", "sub/b.jpg"]
    with pytest.raises(FileNotFoundError):
        list_examples(tmp_path / "missing")


def test_cli_requires_a_model_when_none_is_shipped(capsys, monkeypatch, tmp_path):
    from bcd import cli
    from runtime import shipped

    monkeypatch.delenv("BCD_MODEL", raising=False)
    monkeypatch.setattr(shipped, "MODELS_DIR", tmp_path)   # an install without shipped models
    assert cli.main(["demo"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert cli.main(["demo", "--model", "x", "--max-file-size", "huge"]) == 2
    assert "not a file size" in capsys.readouterr().err


def test_cli_serves_every_shipped_model_or_each_model_given(monkeypatch, tmp_path):
    from bcd import cli
    from runtime import shipped

    args = cli.build_parser().parse_args(["demo", "--model", "full", "--model", "slim"])
    assert args.model == [Path("full"), Path("slim")]
    assert DemoConfig(model=args.model).models == [Path("full"), Path("slim")]
    assert DemoConfig(model=[tmp_path]).model == tmp_path          # a list of one is one path
    with pytest.raises(ValueError):
        DemoConfig(model=[])
    for name in ("a-other", shipped.SHIPPED_MODEL, shipped.SHIPPED_MODEL + "-slim"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    monkeypatch.setattr(shipped, "MODELS_DIR", tmp_path)
    monkeypatch.delenv("BCD_MODEL", raising=False)
    assert [p.name for p in shipped.default_models()] == [
        shipped.SHIPPED_MODEL, "a-other", shipped.SHIPPED_MODEL + "-slim"]
    monkeypatch.setenv("BCD_MODEL", str(tmp_path / "a-other"))
    assert shipped.default_models() == [tmp_path / "a-other"]


# ---------------------------------------------------------------------- served app

gradio_client = needs_module("gradio_client")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if "_mask" not in p.stem)


@pytest.fixture(scope="module")
def images(tiny_dataset) -> list[Path]:
    found = _images(tiny_dataset)
    assert len(found) >= 5
    return found


@pytest.fixture(scope="module")
def expected(tiny_export, images) -> dict[str, float]:
    """The runtime's own probabilities (onnx-fp32), straight from Classifier."""
    from runtime.classifier import Classifier

    with Classifier.load(tiny_export, variant="onnx-fp32", threads=1) as clf:
        return {str(p): clf.predict(str(p)).probability for p in images}


@pytest.fixture(scope="module")
def demo_export(tiny_export, tmp_path_factory) -> Path:
    """tiny_export with onnx-int8 marked as failing the parity checks (whether the tiny
    model's int8 variant passes varies), so the page has one servable and one refused
    variant."""
    import json

    out = tmp_path_factory.mktemp("demo-export") / "export"
    shutil.copytree(tiny_export, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for v in manifest["variants"]:
        if v["name"] == "onnx-int8":
            v["status"], v["reason"] = "failed", "AUC drop 0.2500 > 0.01 (1.0000 -> 0.7500)"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def served(demo_export, images, tmp_path_factory):
    from demo.app import launch

    examples = tmp_path_factory.mktemp("examples")
    for p in images[:3]:
        shutil.copy(p, examples / p.name)
    config = DemoConfig(model=demo_export, port=_free_port(), examples=examples, max_file_size="2MB",
                        quiet=True)
    blocks, url = launch(config, block=False)
    try:
        yield blocks, url
    finally:
        blocks.close()


def test_service_reads_16bit_tiff_and_extensionless_dicom_like_the_runtime(demo_export, images, expected):
    """Uploads reach runtime.images untouched: a 16-bit TIFF of an image gives the
    runtime's probability for the 8-bit original; a DICOM without a .dcm name is read
    and its burned-in-annotation warning reaches the page."""
    import cv2
    import numpy as np

    from demo.service import DemoService
    from tests.conftest import dicom_bytes

    service = DemoService(DemoConfig(model=demo_export, threads=1))
    try:
        gray = cv2.imread(str(images[0]), cv2.IMREAD_GRAYSCALE)
        if np.array_equal(cv2.imread(str(images[0])), cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)):
            ok, tiff = cv2.imencode(".tiff", gray.astype(np.uint16) * 257)
            assert ok
            outcome = service.classify_bytes(tiff.tobytes(), "scan16.tif", "onnx-fp32")
            assert outcome.ok and outcome.probability == pytest.approx(expected[str(images[0])], abs=1e-6)
        outcome = service.classify_bytes(dicom_bytes(gray, BurnedInAnnotation="YES"), "IM0001", "onnx-fp32")
        assert outcome.ok, outcome.error
        assert outcome.overlay_rgb is not None and outcome.image_rgb is not None
        assert any("BurnedInAnnotation" in n for n in outcome.notes)
        refused = service.classify_bytes(b"GIF89a", "x.gif", "onnx-fp32")
        assert not refused.ok and "could not be used" in refused.error
    finally:
        service.close()


def test_service_refuses_images_that_are_not_a_scan_with_a_message(demo_export, images):
    """runtime.input_checks' refusals reach the page as a sentence, not a prediction."""
    import cv2
    import numpy as np

    from demo import views
    from demo.service import DemoService

    service = DemoService(DemoConfig(model=demo_export, threads=1))
    try:
        hue = np.tile(np.linspace(0, 179, 200).astype(np.uint8), (150, 1))
        photo = cv2.cvtColor(np.dstack([hue, np.full_like(hue, 220), np.full_like(hue, 200)]), cv2.COLOR_HSV2BGR)
        cases = {"tiny.png": (np.zeros((2, 2), np.uint8), "at least 64 pixels"),
                 "flat.png": (np.full((300, 300), 90, np.uint8), "flat colour"),
                 "photo.png": (photo, "strongly coloured")}
        for name, (image, words) in cases.items():
            outcome = service.classify_bytes(cv2.imencode(".png", image)[1].tobytes(), name, "onnx-fp32")
            assert not outcome.ok and outcome.label is None and outcome.probability is None
            assert "does not look like a breast ultrasound scan" in outcome.error and words in outcome.error
            page = views.result_html(outcome)
            assert f"Could not classify {name}" in page and "Nothing was classified" in page
        assert service.classify_bytes(images[0].read_bytes(), images[0].name, "onnx-fp32").ok
    finally:
        service.close()


@pytest.fixture(scope="module")
def strict_export(tiny_export, images, expected, tmp_path_factory) -> Path:
    """A second model: tiny_export with another operating threshold in its manifest.json
    (what Classifier uses for an export directory; the copy embedded in the .onnx files
    only serves a lone .onnx), chosen so that images[0] gets the opposite call."""
    import json

    out = tmp_path_factory.mktemp("demo-pair") / "tiny-strict"
    shutil.copytree(tiny_export, out)
    manifest = json.loads((out / "manifest.json").read_text())
    p, t = expected[str(images[0])], manifest["threshold"]["value"]
    manifest["threshold"]["value"] = (p + 1) / 2 if p >= t else p / 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _threshold(export: Path) -> float:
    import json

    return json.loads((export / "manifest.json").read_text())["threshold"]["value"]


def test_service_serves_several_models_each_with_its_own_threshold(demo_export, strict_export, images, expected):
    from demo import views
    from demo.service import DemoService

    single = DemoService(DemoConfig(model=demo_export, threads=1))
    try:   # one model: the picker as before, bare variant names
        assert not single.multi
        assert [value for _, value in views.variant_choices(single)] == ["onnx-fp32", "onnx-int8"]
        assert views.variant_choices(single)[0][0].startswith("onnx-fp32 · ONNX fp32 · ")
    finally:
        single.close()
    loose, strict = _threshold(demo_export), _threshold(strict_export)
    service = DemoService(DemoConfig(model=[demo_export, strict_export], threads=1))
    try:
        assert service.multi and [m.name for m in service.models] == ["export", "tiny-strict"]
        choices = views.variant_choices(service)
        values = [value for _, value in choices]
        assert values[:2] == ["export · onnx-fp32", "tiny-strict · onnx-fp32"]
        ok = [v.servable for v in service.variants]
        assert ok == sorted(ok, reverse=True) and not service.variant("export · onnx-int8").servable  # failed: last
        labels = dict((value, label) for label, value in choices)
        assert labels["tiny-strict · onnx-fp32"].startswith("tiny-strict · onnx-fp32 · ONNX fp32 · ")
        assert labels["export · onnx-int8"] == "⚠ export · onnx-int8 · FAILED export checks (not served)"
        data, p = images[0].read_bytes(), expected[str(images[0])]
        calls = {}
        for key, threshold in (("export · onnx-fp32", loose), ("tiny-strict · onnx-fp32", strict)):
            for asked in (key, labels[key]):                         # the picker's value or its label
                outcome = service.classify_bytes(data, images[0].name, asked)
                assert outcome.ok, outcome.error
                assert outcome.variant == key and outcome.model == key.split(" · ")[0]
                assert outcome.probability == pytest.approx(p, abs=1e-6)
                assert outcome.threshold == pytest.approx(threshold)
                assert outcome.label == ("malignant" if p >= threshold else "benign")
                calls[key] = outcome.label
            assert views.fmt_prob_pair(p, threshold)[1] in views.result_html(outcome)
            assert f"Operating threshold **{threshold:.4g}**" in views.parity_markdown(service, key)
        assert calls["export · onnx-fp32"] != calls["tiny-strict · onnx-fp32"]
        bare = service.classify_bytes(data, "x.png", "onnx-fp32")     # old API clients: the first model
        assert bare.variant == "export · onnx-fp32" and bare.threshold == pytest.approx(loose)
        refused = service.classify_bytes(data, "x.png", "export · onnx-int8")
        assert not refused.ok and "did not pass the export's checks" in refused.error
        summary = views.model_summary_markdown(service)
        assert f"| tiny-strict | {strict:.4g} |" in summary and f"| export | {loose:.4g} |" in summary
        assert "| model | variant |" in views.variants_table_markdown(service)
        assert "original Keras model: AUC" in views.parity_markdown(service, "tiny-strict · onnx-fp32")
    finally:
        service.close()


def _client(url: str):
    return gradio_client.Client(url, verbose=False, download_files=False, analytics_enabled=False)


def _classify(client, path: Path, variant: str = "onnx-fp32") -> dict:
    out = client.predict(gradio_client.handle_file(str(path)), variant, api_name="/classify")
    assert isinstance(out, (list, tuple)) and len(out) >= 4
    return out[3]


def test_served_on_loopback_with_the_safe_settings(served):
    blocks, url = served
    assert url.startswith("http://127.0.0.1:")
    assert blocks.share is False and not blocks.share_url
    assert blocks.max_file_size == 2 * 1024 ** 2
    assert blocks.allowed_paths == []
    assert blocks.analytics_enabled is False
    assert blocks.delete_cache == (300, 600)           # result images leave the cache after 10 minutes
    assert blocks._queue.default_concurrency_limit == 2
    cache = blocks.bcd_cache_dir
    assert os.environ["GRADIO_TEMP_DIR"] == str(cache)
    assert (cache.stat().st_mode & 0o077) == 0          # private to this user


def test_client_gets_label_and_probability(served, images, expected):
    blocks, url = served
    client = _client(url)
    image = images[-1]
    result = _classify(client, image)
    assert result["error"] is None
    assert result["label"] in ("benign", "malignant")
    assert result["probability"] == pytest.approx(expected[str(image)], abs=1e-6)
    assert result["label"] == ("malignant" if result["probability"] >= result["threshold"] else "benign")
    assert result["inference_ms"] > 0 and result["variant"] == "onnx-fp32"
    # the upload is gone from the server once read
    data = image.read_bytes()
    left = [p for p in Path(blocks.bcd_cache_dir).rglob("*") if p.is_file() and p.read_bytes() == data]
    assert left == []


def test_bad_uploads_get_a_message_and_the_app_keeps_serving(served, images, expected, tmp_path):
    _, url = served
    client = _client(url)
    text = tmp_path / "notes.png"
    text.write_bytes(b"this is a text file, not an image\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(images[0].read_bytes()[:600])
    # a 200-byte PNG whose header claims 100000 x 100000 pixels
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                     + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    for bad, words in ((text, "not a readable image"), (truncated, "truncated"), (bomb, "pixels")):
        result = _classify(client, bad)
        assert result["label"] is None and result["probability"] is None
        assert words in result["error"], result["error"]
    html = client.predict(gradio_client.handle_file(str(text)), "onnx-fp32", api_name="/classify")[0]
    assert "Could not classify notes.png" in html and "Traceback" not in html
    # over the upload limit: refused by Gradio before our code runs
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2 * 1024 ** 2 + 10))
    with pytest.raises(Exception):
        _classify(client, big)
    # a variant that failed the export's checks is not served
    refused = _classify(client, images[0], "onnx-int8")
    assert refused["probability"] is None and "did not pass the export's checks" in refused["error"]
    # and the next request is answered normally
    good = _classify(client, images[1])
    assert good["error"] is None
    assert good["probability"] == pytest.approx(expected[str(images[1])], abs=1e-6)


def _load(url: str, images, expected, n_clients: int, per_client: int, budget: float):
    """n_clients threads x per_client requests; (errors, latencies in s, answered, seconds)."""
    deadline = time.monotonic() + budget
    errors: list[str] = []
    latencies: list[float] = []
    answered = []
    lock = threading.Lock()

    def user(k: int) -> None:
        client = _client(url)
        for i in range(per_client):
            if time.monotonic() > deadline:
                with lock:
                    errors.append(f"client {k}: deadline passed")
                return
            # 5 distinct images shared by 4 clients each: identical uploads arrive at the same time
            image = images[(k + i) % 5]
            t0 = time.monotonic()
            try:
                result = _classify(client, image)
            except Exception as err:  # noqa: BLE001 - collected, reported below
                with lock:
                    errors.append(f"client {k} request {i}: {err.__class__.__name__}: {err}")
                continue
            with lock:
                latencies.append(time.monotonic() - t0)
                answered.append(result)
                if result["error"] is not None:
                    errors.append(f"client {k}: {result['error']}")
                elif result["probability"] != pytest.approx(expected[str(image)], abs=1e-6):
                    errors.append(f"client {k}: {image.name} got {result['probability']}, "
                                  f"runtime says {expected[str(image)]}")
                elif result["label"] not in ("benign", "malignant"):
                    errors.append(f"client {k}: label {result['label']!r}")

    started = time.monotonic()
    with ThreadPoolExecutor(n_clients) as pool:
        for future in [pool.submit(user, k) for k in range(n_clients)]:
            future.result(timeout=budget + 60)
    return errors, latencies, answered, time.monotonic() - started


@pytest.mark.slow   # load test
def test_load_20_clients_x_10_requests(served, images, expected):
    """Every request answered correctly, 0 errors; p95 latency and the peak memory of
    this process (the server runs in it) are printed for docs/RELIABILITY.md."""
    from runtime.host import peak_rss_mib as peak_rss_mb, reset_peak_rss

    _, url = served
    n_clients, per_client = 20, 10
    reset_peak_rss()                                    # count the load only, not the training before
    before = peak_rss_mb()
    errors, latencies, answered, seconds = _load(url, images, expected, n_clients, per_client, 300)
    assert errors == [], f"{len(errors)} of {n_clients * per_client} requests failed: {errors[:5]}"
    assert len(answered) == n_clients * per_client
    p50, p95 = (sorted(latencies)[int(q * (len(latencies) - 1))] for q in (0.5, 0.95))
    print(f"\n{n_clients * per_client} requests from {n_clients} concurrent clients in {seconds:.1f} s: "
          f"0 errors, latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms; "
          f"peak RSS of the test process (server + 20 clients) {peak_rss_mb():.0f} MB, {before:.0f} MB before")


@pytest.mark.slow   # load test
def test_a_full_queue_refuses_excess_load_with_a_message(demo_export, images, expected):
    """A server with 1 worker and room for 2 waiting requests, hit by 20 clients at
    once: the excess is refused with a clear message, the rest are answered correctly,
    and the server keeps serving afterwards."""
    from demo.app import launch

    config = DemoConfig(model=demo_export, port=_free_port(), quiet=True, concurrency=1, queue_size=2)
    blocks, url = launch(config, block=False)
    try:
        errors, latencies, answered, _ = _load(url, images, expected, 20, 1, 120)
        refused = [e for e in errors if "queue" in e.lower() and "full" in e.lower()]
        assert refused, f"nothing was refused: {errors[:3]}"
        assert len(refused) == len(errors), f"other errors than a full queue: {errors[:3]}"
        assert len(answered) + len(refused) == 20 and answered
        after = _classify(_client(url), images[0])
        assert after["error"] is None and after["probability"] == pytest.approx(expected[str(images[0])], abs=1e-6)
        print(f"\nqueue of 2 behind 1 worker, 20 simultaneous clients: {len(answered)} answered, "
              f"{len(refused)} refused, e.g. {refused[0]!r}")
    finally:
        blocks.close()


def test_api_serves_the_selected_models_threshold(demo_export, strict_export, images, expected):
    from demo.app import launch

    blocks, url = launch(DemoConfig(model=[demo_export, strict_export], port=_free_port(), threads=1, quiet=True),
                         block=False)
    try:
        client = _client(url)
        p = expected[str(images[0])]
        for key, threshold in (("export · onnx-fp32", _threshold(demo_export)),
                               ("tiny-strict · onnx-fp32", _threshold(strict_export))):
            result = _classify(client, images[0], key)
            assert result["error"] is None and result["variant"] == key
            assert result["probability"] == pytest.approx(p, abs=1e-6)
            assert result["threshold"] == pytest.approx(threshold)
            assert result["label"] == ("malignant" if p >= threshold else "benign")
    finally:
        blocks.close()


# ---------------------------------------------------------------------- real browser


@contextlib.contextmanager
def _chromium_page():
    """A page in Debian's headless Chromium, driven by Playwright, with a throwaway profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="bcd-chromium-") as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield browser.new_page()
        finally:
            browser.close()


def _upload_and_wait(page, url: str, image: Path) -> None:
    """Open the demo, upload one image, wait for the verdict and the Grad-CAM overlay."""
    page.goto(url, wait_until="load", timeout=60_000)
    page.locator("#bcd-upload input[type=file]").set_input_files(str(image), timeout=60_000)
    page.locator("#bcd-result .bcd-verdict").wait_for(timeout=60_000)
    page.locator("#bcd-overlay img").wait_for(timeout=30_000)
    page.wait_for_timeout(500)


@pytest.mark.slow   # browser
def test_browser_upload_shows_result_heatmap_and_disclaimer(served, images):
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run installs Debian's chromium)")
    needs_module("playwright.sync_api")   # the dev extra
    _, url = served
    RESULTS.mkdir(exist_ok=True)
    shot = RESULTS / "demo-tiny.png"
    outside: list[str] = []
    image = next(p for p in images if "malignant" in str(p)) if any("malignant" in str(p) for p in images) \
        else images[0]
    with _chromium_page() as page:
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith((url.rstrip("/"), "data:", "blob:")) else None)
        _upload_and_wait(page, url, image)
        card = page.locator("#bcd-result").inner_text()
        assert "probability" in card and "threshold" in card
        assert DISCLAIMER in card
        assert page.locator("#bcd-input img").is_visible() and page.locator("#bcd-overlay img").is_visible()
        assert "onnx-int8" in page.locator("#bcd-variant").inner_text()
        assert "AUC" in page.locator("#bcd-parity").inner_text()
        page.screenshot(path=str(shot), full_page=True)
        # the variant that failed the export's checks is labelled and refused with a message
        page.get_by_text("onnx-int8 · FAILED").click()
        page.locator("#bcd-result .bcd-error").wait_for(timeout=30_000)
        assert "not served" in page.locator("#bcd-result").inner_text()
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert outside == [], f"the page tried to reach other hosts: {outside}"


SHIPPED_BUSI = REPO.parent / "shared" / "data" / "busi"


@pytest.mark.slow   # browser
def test_browser_with_the_shipped_models_on_a_real_image(tmp_path):
    """results/demo.png: what a newcomer sees after `bcd demo`, the shipped reference
    model(s) on a malignant image of the shipped split's held-out test part."""
    import json

    from demo.app import launch
    from runtime.shipped import shipped_models

    models = shipped_models()
    if not models or not SHIPPED_BUSI.is_dir() or not Path(CHROMIUM).exists():
        missing("needs runtime/models/, ../shared/data/busi and chromium")

    split = json.loads((models[0] / "split.json").read_text())
    name = next(f["path"] for f in split["files"]["test"]
                if f["class"] == "malignant" and f.get("source", "busi") == "busi")
    image = tmp_path / Path(name).name.replace(" ", "_")
    shutil.copy(SHIPPED_BUSI / name, image)
    blocks, url = launch(DemoConfig(model=models, port=_free_port(), quiet=True), block=False)
    RESULTS.mkdir(exist_ok=True)
    shot = RESULTS / "demo.png"
    try:
        with _chromium_page() as page:
            _upload_and_wait(page, url, image)
            card = page.locator("#bcd-result").inner_text()
            assert "probability" in card and "not a diagnosis" in card
            picked = page.locator("#bcd-variant").inner_text()
            assert "onnx-int8" in picked and (len(models) == 1 or models[0].name in picked)
            page.screenshot(path=str(shot), full_page=True)
    finally:
        blocks.close()
    assert shot.stat().st_size > 10_000
