"""The Gradio demo: upload a breast ultrasound image, see the model's call against its
operating threshold, the Grad-CAM heatmap beside the image, and each exported
variant's agreement with the original model.

    from demo.app import DemoConfig, build_app, launch
    launch(DemoConfig(model="exports/busi-224"))                 # blocks; Ctrl-C stops it
    blocks = build_app(DemoConfig(model="exports/busi-224"))     # a gr.Blocks to launch yourself
    launch(DemoConfig(model=runtime.shipped.shipped_models()))  # compare the shipped models

With several models the picker lists every variant of each as "MODEL · VARIANT", and
the threshold, parity figures and baseline shown are the selected model's. The lesion
box (issue 21): the proposed box is drawn after every upload; the call can be for it or
for a box drawn with two clicks on the input image; "Download report" gives the result's
one-page report (runtime.report), written into the private cache.

Only `runtime` and Gradio are imported (no TensorFlow). Safety defaults: loopback only,
no share link, upload size limit, a queue with 2 workers, no extra file access
(allowed_paths stays empty: example images are copied into the cache as thumbnails and
read server-side), uploads deleted right after they are read, Gradio's cache in a
private temporary folder removed at exit, no analytics, no run history kept in the
browser, no monitoring or MCP endpoints. See demo/README.md.
"""
from __future__ import annotations

import os

# Before gradio is imported: no telemetry and no version check from this process.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import atexit  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from demo import views  # noqa: E402
from demo.config import DemoConfig  # noqa: E402
from demo.service import MINE, PROPOSED, WHOLE, DemoService, Outcome, PageState, click  # noqa: E402

__all__ = ["DemoConfig", "build_app", "launch", "private_cache_dir"]

log = logging.getLogger("bcd.demo")

API_NAME = "classify"            # gradio_client: client.predict(handle_file(path), variant, api_name="/classify")
# (an optional third argument: the scan region, "auto" or "off")
REGION_CHOICES = [("auto: the scan inside the screen", "auto"), ("off: the whole image", "off")]
                                 # variant: a picker value or label ("MODEL · VARIANT" with several models)
# (an optional fourth argument: the lesion box, "" for the whole scan region, "auto" or "x,y,w,h")
ROI_CHOICES = [("Whole scan region", WHOLE), ("Proposed box", PROPOSED), ("My box", MINE)]

_cache_lock = threading.Lock()
_private_cache: Path | None = None


def private_cache_dir(config: DemoConfig | None = None) -> Path:
    """Gradio's upload/result cache for this process: `config.temp_dir` if set, else one
    private (mode 0700) temporary folder, removed when the process exits. Gradio reads
    GRADIO_TEMP_DIR when components and the server are created, so this is set before."""
    global _private_cache
    with _cache_lock:
        if config is not None and config.temp_dir is not None:
            path = Path(config.temp_dir).resolve()
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            if _private_cache is None or not _private_cache.is_dir():
                _private_cache = Path(tempfile.mkdtemp(prefix="bcd-demo-")).resolve()
                atexit.register(shutil.rmtree, _private_cache, True)
            path = _private_cache
        os.environ["GRADIO_TEMP_DIR"] = str(path)
        return path


def build_app(config: DemoConfig, service: DemoService | None = None) -> gr.Blocks:
    """The page as a gr.Blocks with its queue set (concurrency limit, queue size).

    Loads the model first (raises on a model that can't be loaded at all). `service`
    may be passed to share loaded classifiers between apps."""
    cache = private_cache_dir(config)
    service = service or DemoService(config)
    outputs_doc = ("result card, input image, Grad-CAM overlay, JSON, ..., the report button (its value: the "
                   "report file), the emptied upload box")

    with gr.Blocks(title="Breast ultrasound classifier (research demo)", analytics_enabled=False,
                   delete_cache=(max(10, min(config.cache_seconds, 300)), config.cache_seconds)) as blocks:
        blocks.bcd_service = service          # for callers and tests
        blocks.bcd_cache_dir = cache
        state = gr.State(None, time_to_live=max(config.cache_seconds, 60))

        gr.Markdown("## Breast ultrasound: benign or malignant-looking? (research demo)")
        gr.HTML(f'<div style="padding:6px 12px;border-radius:6px;background:#fff4d6;border:1px solid #e0b44a;'
                f'color:#5c4300;font-weight:600;">&#9888; {views.esc(views.DISCLAIMER)} The model was '
                'trained on small data from two hospitals. Do not use its output to make or rule out a diagnosis.</div>')

        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                upload = gr.File(label="Ultrasound image (PNG, JPEG, BMP, TIFF or DICOM)", file_count="single",
                                 type="filepath", height=120, elem_id="bcd-upload")
                gallery = None
                if service.examples:
                    gallery = gr.Gallery(value=service.example_thumbnails(), label="Examples: click one to classify it",
                                         columns=4, height=_gallery_height(len(service.examples)),
                                         allow_preview=False, interactive=False,
                                         format="png", buttons=[], elem_id="bcd-examples")
                info = ("Smaller/quantized variants are faster; the figures below show how closely each one "
                        "agrees with the original model.")
                if service.multi:
                    info = ("Variants of several models (e.g. the full model and its slim version); each "
                            "uses its own model's threshold. " + info)
                variant = gr.Radio(views.variant_choices(service), value=service.default_variant,
                                   label="Model variant", elem_id="bcd-variant", info=info)
                region = gr.Radio(REGION_CHOICES, value=service.default_region(), label="Scan region",
                                  elem_id="bcd-region",
                                  info="auto classifies only the ultrasound image inside a scanner's screen (a DICOM "
                                       "file's own region, else the one found); off classifies the whole image")
                parity = gr.Markdown(views.parity_markdown(service, service.default_variant), label="variant details",
                                     elem_id="bcd-parity")
                with gr.Accordion("All variants", open=False):
                    table = gr.Markdown(views.variants_table_markdown(service), label="all variants",
                                        elem_id="bcd-variants-table")
                gr.Markdown(views.model_summary_markdown(service), elem_id="bcd-models")
            with gr.Column(scale=3, min_width=360):
                result = gr.HTML(views.placeholder_html(), label="result card", elem_id="bcd-result")
                report = gr.DownloadButton("Download report (HTML, prints on one A4 page)", value=None,
                                           interactive=False, size="sm", elem_id="bcd-report")
                with gr.Row():
                    shown = gr.Image(label="Input", type="numpy", format="png", interactive=False,
                                     buttons=["fullscreen"], elem_id="bcd-input", height=360)
                    overlay = gr.Image(label="Grad-CAM overlay", type="numpy", format="png", interactive=False,
                                       buttons=["download", "fullscreen"], elem_id="bcd-overlay", height=360)
                with gr.Row(equal_height=True, elem_id="bcd-roi"):
                    roi_mode = gr.Radio(ROI_CHOICES, value=WHOLE, label="Lesion box: what the call is for",
                                        elem_id="bcd-roi-mode", scale=3,
                                        info="The magenta box is proposed (by the model's lesion localiser, else its "
                                             "Grad-CAM; the card under the call says which), or drawn by you: click "
                                             "two opposite corners of the lesion on the input image")
                    with gr.Column(scale=2, min_width=220):
                        roi_box = gr.Textbox(label="My box: x, y, width, height (the original image's pixels)",
                                             placeholder="e.g. 120,80,160,140 (Enter classifies it)", max_lines=1,
                                             elem_id="bcd-roi-box")
                        with gr.Row():
                            roi_use = gr.Button("Classify my box", size="sm", elem_id="bcd-roi-use")
                            roi_clear = gr.Button("Clear my box", size="sm", elem_id="bcd-roi-clear")
                roi_status = gr.HTML(views.roi_status_html(), elem_id="bcd-roi-status")
                api_roi = gr.Textbox(value="", visible=False)     # the API's lesion box; the page uses the controls
                gr.Markdown("Grad-CAM: red marks the regions that pushed this image's score most towards "
                            "malignant, blue those that did little or nothing, relative to the rest of the same "
                            "image. It is not a lesion outline and does not compare images with each other.")
                with gr.Accordion("Result as JSON", open=False):
                    raw = gr.JSON(label="result", elem_id="bcd-json")

        outs = [result, shown, overlay, raw, state, parity, table, roi_mode, roi_box, roi_status, report]
        keep_all = tuple(gr.update() for _ in outs)

        def respond(outcome: Outcome, page: PageState | None, variant_name: str, status: str = "",
                    problem: bool = False) -> tuple[Any, ...]:
            """The page for an outcome: a result (or an error card), the lesion-box controls, the report."""
            if page is not None and outcome.roi_error:
                return keep_page(page, outcome.error or "")
            return (views.result_html(outcome), outcome.image_rgb, outcome.overlay_rgb, outcome.to_json(), page,
                    views.parity_markdown(service, outcome.variant or variant_name),
                    views.variants_table_markdown(service),
                    page.mode if page is not None else WHOLE,
                    page.box if page is not None else "",
                    views.roi_status_html(status, problem), report_button(outcome))

        def keep_page(page: PageState, message: str) -> tuple[Any, ...]:
            """A box that can't be used: the result stays; the controls go back to what it is for."""
            if page.shown is None:      # nothing to keep (an API call's box): the error card says why
                return (views.error_html(page.name, message), None, None, {"file": page.name, "error": message},
                        page, gr.update(), gr.update(), page.mode, gr.update(), views.roi_status_html(message, True),
                        report_button(None))
            return (gr.update(), page.shown.image_rgb, gr.update(), gr.update(), page, gr.update(), gr.update(),
                    page.mode, gr.update(), views.roi_status_html(message, True), gr.update())

        def report_button(outcome: Outcome | None):
            if outcome is None or not outcome.ok or outcome.prediction is None:
                return gr.update(value=None, interactive=False)
            try:
                return gr.update(value=str(service.write_report(outcome, cache)), interactive=True)
            except Exception:  # noqa: BLE001 - the result is still shown
                log.exception("writing the report of %s failed", outcome.file)
                return gr.update(value=None, interactive=False)

        def fail(message: str, variant_name: str | None, file: str | None = None, keep=None) -> tuple[Any, ...]:
            return (views.error_html(file, message), None, None, {"file": file, "error": message}, keep,
                    views.parity_markdown(service, variant_name), views.variants_table_markdown(service),
                    WHOLE, "", views.roi_status_html(), report_button(None))

        def on_upload(file, variant_name, region_mode=None, roi=None):
            # Runs with preprocess=False: `file` is Gradio's FileData for the upload, already
            # checked by Gradio to lie in its cache; the bytes are read and the file deleted here.
            variant_name = variant_name or service.default_variant
            try:
                if file is None:
                    return fail("No file was uploaded.", variant_name)
                data, name = _take_upload(file, cache)
            except _UploadGone as err:
                return fail(str(err), variant_name)
            except Exception:  # noqa: BLE001 - never an exception dialog
                log.exception("reading an upload failed")
                return fail("The upload could not be read on the server. Please try again.", variant_name)
            return _classify(PageState.for_upload(data, name, roi if isinstance(roi, str) else None),
                             variant_name, region_mode)

        def _classify(page: PageState, variant_name: str, region_mode: str | None = None,
                      mode: str | None = None, box: str | None = None, status: str = "", fallback: bool = False):
            """fallback: a box the new variant or region can't use gives way to the whole scan
            region (with a message), so the page never shows another variant's result."""
            try:
                outcome = service.rerun(page, variant_name, region_mode, mode, box, fallback=fallback)
            except Exception as err:  # noqa: BLE001 - the app keeps serving
                log.exception("classifying %s failed", page.name)
                return fail(f"Internal error while classifying ({err.__class__.__name__}).", variant_name, page.name,
                            page)
            if outcome.box_dropped:
                return respond(outcome, page, variant_name, outcome.box_dropped, problem=True)
            return respond(outcome, page, variant_name, status)

        def on_variant(variant_name, page, region_mode=None):
            if isinstance(page, PageState) and page.data is not None:
                return _classify(page, variant_name, region_mode, fallback=True)
            return (*keep_all[:4], page, views.parity_markdown(service, variant_name),
                    views.variants_table_markdown(service), *keep_all[7:])

        def on_clear():
            return (views.placeholder_html(), None, None, None, None, gr.update(),
                    views.variants_table_markdown(service), WHOLE, "", views.roi_status_html(), report_button(None))

        def on_upload_then_empty(file, variant_name, region_mode=None, roi=None):
            # The upload box is emptied once the file is read: the server deleted it, so its
            # download link would lead nowhere; the result card names the file.
            return (*on_upload(file, variant_name, region_mode, roi), None)

        def on_roi_mode(mode, page, variant_name, region_mode):
            if not isinstance(page, PageState) or page.data is None:
                return (*keep_all[:4], page, *keep_all[5:7], WHOLE, gr.update(),
                        views.roi_status_html("There is no image yet: upload one first.", True), gr.update())
            return _classify(page, variant_name, region_mode, mode=mode)

        def on_roi_box(text, page, variant_name, region_mode):
            if not isinstance(page, PageState) or page.data is None:
                return (*keep_all[:4], page, *keep_all[5:9],
                        views.roi_status_html("There is no image yet: upload one first.", True), gr.update())
            return _classify(page, variant_name, region_mode, mode=MINE, box=str(text or ""))

        def on_image_click(page, variant_name, region_mode, evt: gr.SelectData):
            # evt.index: [x, y] in the shown picture's own pixels (Gradio scales the click back)
            if not isinstance(page, PageState):
                page = PageState()
            index = evt.index if isinstance(evt.index, (list, tuple)) and len(evt.index) == 2 else (None, None)
            done = click(page, *index)
            if done.box is not None:
                return _classify(page, variant_name, region_mode, mode=MINE, box=done.box, status=done.message)
            problem = done.corner is None
            return (gr.update(), done.image_rgb if done.image_rgb is not None else gr.update(), *keep_all[2:4], page,
                    *keep_all[5:9], views.roi_status_html(done.message, problem), gr.update())

        def on_roi_clear(page, variant_name, region_mode):
            if not isinstance(page, PageState) or page.data is None:
                return (*keep_all[:4], page, *keep_all[5:8], "", views.roi_status_html(), gr.update())
            page.box, page.corner = "", None
            if page.mode == MINE:
                return _classify(page, variant_name, region_mode, mode=WHOLE)
            shown_image = page.shown.image_rgb if page.shown is not None else gr.update()
            return (gr.update(), shown_image, *keep_all[2:4], page, *keep_all[5:8], "", views.roi_status_html(),
                    gr.update())

        upload.upload(on_upload_then_empty, inputs=[upload, variant, region, api_roi], outputs=[*outs, upload],
                      api_name=API_NAME,
                      preprocess=False,
                      api_description=f"Classify one image file with the selected variant; returns {outputs_doc}.")
        upload.clear(on_clear, inputs=None, outputs=outs, api_visibility="private")
        variant.change(on_variant, inputs=[variant, state, region], outputs=outs, api_visibility="private")
        region.change(lambda region_mode, page, variant_name: on_variant(variant_name, page, region_mode),
                      inputs=[region, state, variant], outputs=outs, api_visibility="private")
        # .input, not .change: the handlers set the choice themselves (an upload, a drawn box)
        roi_mode.input(on_roi_mode, inputs=[roi_mode, state, variant, region], outputs=outs,
                       api_visibility="private")
        roi_box.submit(on_roi_box, inputs=[roi_box, state, variant, region], outputs=outs, api_visibility="private")
        roi_use.click(on_roi_box, inputs=[roi_box, state, variant, region], outputs=outs, api_visibility="private")
        roi_clear.click(on_roi_clear, inputs=[state, variant, region], outputs=outs, api_visibility="private")
        # every click counts (the second corner may come while the first is still being
        # marked), one at a time: both change the tab's state
        shown.select(on_image_click, inputs=[state, variant, region], outputs=outs, api_visibility="private",
                     trigger_mode="multiple", concurrency_limit=1, concurrency_id="bcd-roi-click")

        if gallery is not None:
            def on_example(variant_name, region_mode, evt: gr.SelectData):
                variant_name = variant_name or service.default_variant
                try:
                    data, name = service.read_example(int(evt.index))
                except (ValueError, OSError, TypeError) as err:
                    return (*fail(f"That example could not be read ({err}).", variant_name), None)
                return (*_classify(PageState.for_upload(data, name), variant_name, region_mode), None)

            gallery.select(on_example, inputs=[variant, region], outputs=[*outs, upload], api_visibility="private")

    blocks.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    return blocks


def _gallery_height(n: int) -> int:
    rows = min(3, (n + 3) // 4)
    return rows * 130 + 40


class _UploadGone(Exception):
    """The uploaded file is not (or no longer) there; the message is for the user."""


def _take_upload(file: Any, cache: Path) -> tuple[bytes, str]:
    """Read an uploaded file's bytes and delete it (and its folder when empty)."""
    if isinstance(file, dict):
        path, orig = file.get("path"), file.get("orig_name")
    elif isinstance(file, (str, os.PathLike)):
        path, orig = str(file), None
    else:
        path, orig = getattr(file, "path", None), getattr(file, "orig_name", None)
    if not path:
        raise _UploadGone("No file was uploaded.")
    real = Path(path).resolve()
    roots = {cache.resolve(), Path(gr.utils.get_upload_folder()).resolve()}
    if not any(root in real.parents for root in roots):
        # Gradio refuses such paths itself; checked again because the file is deleted below.
        raise _UploadGone("That file is not an upload to this app.")
    name = Path(str(orig or real.name)).name
    try:
        data = real.read_bytes()
    except FileNotFoundError:
        data = _recent.get(str(real))
        if data is None:
            raise _UploadGone("The uploaded file is no longer on the server (uploads are deleted as soon as "
                              "they are read). Please upload it again.") from None
        return data, name
    _recent.put(str(real), data)             # before deleting: a twin request may look it up at once
    try:
        real.unlink(missing_ok=True)
    except OSError:
        pass
    # The upload's folder (<cache>/<sha256>/) is not removed now: Gradio may be storing a
    # second upload of the same file in it at this moment (its mkdir(exist_ok) then fails
    # with a 500). Empty folders are swept once they have been untouched for a minute.
    _sweep_empty_folders(roots)
    return data, name


_EMPTY_FOLDER_AGE = 60.0                     # seconds an empty cache folder is left alone
_SWEEP_EVERY = 30.0
_sweep_lock = threading.Lock()
_last_sweep = [0.0]


def _sweep_empty_folders(roots: set[Path], age: float = _EMPTY_FOLDER_AGE) -> None:
    """Remove the empty folders directly inside the cache roots (uploads read and
    deleted, result images deleted by Gradio) that were last changed `age` seconds ago."""
    now = time.monotonic()
    with _sweep_lock:
        if now - _last_sweep[0] < _SWEEP_EVERY:
            return
        _last_sweep[0] = now
    cutoff = time.time() - age
    for root in roots:
        try:
            folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            continue
        for folder in folders:
            try:
                if folder.stat().st_mtime < cutoff:
                    folder.rmdir()           # fails (and is skipped) unless empty
            except OSError:
                pass


class _RecentUploads:
    """Bytes of the uploads read in the last few seconds, in memory only.

    Gradio stores an upload at <cache>/<sha256 of its bytes>/<name>, so when two users
    upload the same file at the same moment both requests name one path, and the first
    to be handled deletes it. A path seen again within `ttl` seconds therefore holds
    exactly these bytes, and the second request is served from here."""

    def __init__(self, ttl: float = 60.0, max_bytes: int = 128 * 1024 ** 2) -> None:
        self.ttl, self.max_bytes = ttl, max_bytes
        self._items: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = (time.monotonic(), data)
            self._prune()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._prune()
            item = self._items.get(key)
            return item[1] if item else None

    def _prune(self) -> None:
        now = time.monotonic()
        total = sum(len(d) for _, d in self._items.values())
        for key in list(self._items):          # oldest first (insertion order)
            stamp, data = self._items[key]
            if now - stamp <= self.ttl and total <= self.max_bytes:
                break
            del self._items[key]
            total -= len(data)


_recent = _RecentUploads()


def launch(config: DemoConfig, block: bool = True) -> tuple[gr.Blocks, str]:
    """Build and serve the app with the safe launch settings; returns (blocks, local URL).
    With block=True (the CLI) this returns only when the server stops."""
    blocks = build_app(config)
    if not config.loopback_only:
        log.warning("serving on %s: anyone who can reach this computer on port %s can use the demo "
                    "(there is no login)", config.host, config.port)
    if config.share:
        log.warning("--share: creating a public link through gradio.live (needs internet); "
                    "anyone with the link can upload images")
    if block:
        _stop_on_sigterm()
    settings = dict(
        server_name=config.host,
        server_port=config.port or None,
        share=bool(config.share),
        max_file_size=config.max_file_size_bytes,
        allowed_paths=[],
        show_error=False,
        quiet=config.quiet,
        inbrowser=False,
        prevent_thread_lock=not block,
        footer_links=["api"],
        run_history=False,           # results are not stored in the browser
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,              # no Node server
        pwa=False,
        strict_cors=True,
        state_session_capacity=max(config.queue_size, 64),
        theme=gr.themes.Default(),   # bundled fonts only: nothing is fetched from the internet
    )
    # Settings a Gradio 6 release before this one doesn't know are left out (they are
    # all off by default there or don't exist), rather than failing to start.
    known = inspect.signature(blocks.launch).parameters
    skipped = sorted(k for k in settings if k not in known)
    if skipped:
        log.info("this Gradio version has no launch setting(s) %s", ", ".join(skipped))
    _, local_url, _ = blocks.launch(**{k: v for k, v in settings.items() if k in known})
    return blocks, local_url


def _stop_on_sigterm() -> None:
    """`kill` / a service manager stop like Ctrl-C: the server closes and the private
    cache is removed (atexit does not run when the process dies of SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
