"""The page's text: result card (HTML), variant picker labels and parity panels
(Markdown). Plain strings, no Gradio, so they are easy to test and to reuse.

Every piece of text that comes from outside (file names, error messages, manifest
notes) goes through `esc` / `md_cell`: a file named `<img onerror=...>.png` must show
as text, never run.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from demo.service import DemoService, Model, Outcome, Variant

from runtime.host import DISCLAIMER  # noqa: E402,F401 - shown on the page

_ABOVE = "#b3261e"        # red: at or above the threshold (malignant-looking)
_BELOW = "#1f5fa8"        # blue: below the threshold
_WARN = "#8a5a00"


def esc(text: object) -> str:
    """HTML-escape, including the characters a JS template string treats specially."""
    return html.escape(str(text), quote=True).replace("$", "&#36;").replace("`", "&#96;")


def md_cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def fmt_prob_pair(p: float, t: float) -> tuple[str, str]:
    """p and t with enough decimals that the shown numbers agree with the decision
    (0.409 vs 0.41 must not both read 0.41)."""
    for digits in (2, 3, 4, 6):
        ps, ts = f"{p:.{digits}f}", f"{t:.{digits}f}"
        if (float(ps) >= float(ts)) == (p >= t) and (ps != ts or p >= t):
            return ps, ts
    return f"{p:.8f}", f"{t:.8f}"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def fmt_count(n: int | float | None) -> str:
    """12_345_678 -> '12.3 M' (MACs, parameters)."""
    if n is None:
        return "n/a"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            value = n / div
            return f"{value:.{2 if abs(value) < 10 else 1 if abs(value) < 100 else 0}f} {unit}"
    return f"{n:.0f}"


def fmt_size(n: int | None) -> str:
    """Decimal units (1 MB = 10**6 bytes), as in the export summary and the benchmarks."""
    if n is None:
        return "n/a"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} KB"


def _disclaimer_html() -> str:
    return ('<div class="bcd-disclaimer" style="margin-top:10px;padding:8px 12px;border-radius:6px;'
            'background:#fff4d6;border:1px solid #e0b44a;color:#5c4300;font-weight:600;">'
            f'&#9888; {esc(DISCLAIMER)}</div>')


def _card(body: str, border: str) -> str:
    return (f'<div class="bcd-result" style="border:2px solid {border};border-radius:10px;padding:14px 16px;'
            f'background:#ffffff;color:#1a1a1a;">{body}{_disclaimer_html()}</div>')


def placeholder_html() -> str:
    body = ('<div style="font-size:1.15em;font-weight:600;">No image yet</div>'
            '<div style="margin-top:6px;">Upload an ultrasound image (PNG, JPEG, BMP, TIFF or DICOM) '
            'or pick an example. The result appears here, with the Grad-CAM heatmap below.</div>')
    return _card(body, "#c9c9c9")


def error_html(file: str | None, message: str) -> str:
    title = f"Could not classify {esc(file)}" if file else "Could not classify the upload"
    body = (f'<div class="bcd-error" style="font-size:1.15em;font-weight:700;color:{_WARN};">&#9888; {title}</div>'
            f'<div style="margin-top:6px;">{esc(message)}</div>'
            '<div style="margin-top:6px;color:#555;">Nothing was classified. You can upload another file.</div>')
    return _card(body, "#e0b44a")


OOD_WARNING = ("Out of distribution: this image looks unlike the breast ultrasound images the model was "
               "trained on (for example a photograph or another kind of scan). The result below means nothing "
               "for it.")


# A box gets its own wording: a model trained on whole scans only, with its OOD score fitted
# on them, flags most boxes (the shipped models' predecessors: the proposed box on 33/65 BUSI
# test lesions); the shipped models learnt from lesion crops too and flag 0-6 % of boxes
# (`python -m benchmarks.studies.roi EXPORT`, docs/results/roi).
OOD_BOX_WARNING = ("Out of distribution: the box classified looks unlike the images the model was trained on. "
                   "A model trained on whole scans only often sees a box drawn close around a lesion this way: "
                   "the result below may mean nothing for it. Compare with the whole scan region.")


def ood_warning_html(box: bool = False) -> str:
    text = OOD_BOX_WARNING if box else OOD_WARNING
    return (f'<div class="bcd-ood" style="margin:6px 0;padding:8px 12px;border-radius:6px;background:#fde7e4;'
            f'border:1px solid {_WARN};color:#5c1a12;font-weight:700;">&#9888; {esc(text)}</div>')


_REGION_SOURCES = {"dicom": "the DICOM file's own tissue region", "found": "found by the scan-region finder",
                   "given": "the box given", "whole": "the whole image"}


def region_html(o: "Outcome") -> str:
    """Which box of the image was classified (outlined on the input image when it is not all of it)."""
    r = o.region
    if not r:
        return ""
    source = _REGION_SOURCES.get(str(r.get("source")), str(r.get("source")))
    mm = r.get("mm_per_pixel")
    scale = f"; {mm[0]:.3f} &times; {mm[1]:.3f} mm per pixel" if mm else ""
    outlined = "" if r.get("source") == "whole" else ", outlined in amber on the input image"
    title = "Scan region" if o.roi and o.roi.get("x") is not None else "Classified region"
    return (f'<div class="bcd-region" style="margin-top:6px;font-size:0.9em;color:#333;">{title}: '
            f'x {int(r["x"])}, y {int(r["y"])}, {int(r["width"])}&times;{int(r["height"])} px '
            f'({esc(source)}{scale}){outlined}.</div>')


_ROI_SOURCES = {"given": "your box", "proposed:gradcam": "proposed from the model's Grad-CAM",
                "proposed:localiser": "proposed by the lesion localiser"}
_PROPOSERS = {"gradcam": "the model's Grad-CAM", "localiser": "the lesion localiser"}
LESION_SWATCH = ('<span style="display:inline-block;width:0.9em;height:0.9em;margin:0 3px -1px 0;'
                 'border:3px solid #ff00ff;box-sizing:border-box;"></span>')


def roi_source_text(source: object) -> str:
    """"proposed:gradcam" -> "proposed from the model's Grad-CAM" (and the like)."""
    source = str(source)
    if source.startswith("none proposed:"):
        return f"nothing proposed by {_PROPOSERS.get(source.split(':', 1)[1], source.split(':', 1)[1])}"
    return _ROI_SOURCES.get(source, source)


def _box_text(b: dict) -> str:
    return f'x {int(b["x"])}, y {int(b["y"])}, {int(b["width"])}&times;{int(b["height"])} px'


def roi_html(o: "Outcome") -> str:
    """What the call is for: the lesion box classified, or the whole scan region with the
    box proposed for it (outlined in magenta on the images)."""
    used, proposed = o.roi, o.proposed
    style = 'class="bcd-roi" style="margin-top:6px;font-size:0.9em;color:#333;"'
    if used and used.get("x") is not None:
        return (f'<div {style}>{LESION_SWATCH}Lesion box classified: {_box_text(used)} '
                f'({esc(roi_source_text(used.get("source")))}), outlined in magenta; the call and the heatmap are '
                'for this box only.</div>')
    if used:      # "auto" found nothing: the whole scan region was classified
        proposer = str(used.get("source")).split(":", 1)[-1]
        return (f'<div {style}>No lesion box was proposed (nothing in {esc(_PROPOSERS.get(proposer, proposer))} '
                'stood out), so the whole scan region was classified. Draw your own box on the input image.</div>')
    if proposed and proposed.get("x") is not None:
        return (f'<div {style}>{LESION_SWATCH}Lesion box {esc(roi_source_text(proposed.get("source")))}: '
                f'{_box_text(proposed)}, outlined in magenta. The call above is for the whole scan region; choose '
                '"Proposed box" to classify only the box, or draw your own.</div>')
    return ""


def roi_status_html(message: str = "", problem: bool = False) -> str:
    """The line under the lesion-box controls: how to draw, a box's corner, or why a box can't be used."""
    if not message:
        message = ("Click one corner of the lesion on the input image, then the opposite corner, to classify your "
                   "own box (or type x,y,w,h and press Enter).")
    colour = _WARN if problem else "#333"
    mark = "&#9888; " if problem else ""
    return (f'<div class="bcd-roi-status{" bcd-roi-problem" if problem else ""}" style="font-size:0.9em;'
            f'color:{colour};{"font-weight:600;" if problem else ""}">{mark}{esc(message)}</div>')


def frames_html(o: "Outcome") -> str:
    """A cine loop's frames: how the call was made from them, and each frame's probability."""
    f = o.frames
    if not f:
        return ""
    used, probs = list(f["used"]), [float(p) for p in f["probabilities"]]
    if len(used) == 1:
        head = f"Cine loop of {int(f['count'])} frames: frame {int(used[0])} classified."
    else:
        head = (f"Cine loop of {int(f['count'])} frames: {len(used)} classified; the probability above is their "
                f"mean (highest frame {max(probs):.3f}).")
    cells = "".join(f'<span style="display:inline-block;margin:2px 6px 2px 0;white-space:nowrap;">'
                    f'{int(n)}: {p:.3f}</span>' for n, p in zip(used, probs))
    return (f'<div class="bcd-frames" style="margin-top:6px;font-size:0.9em;color:#333;">{head}'
            f'<div style="margin-top:2px;font-family:monospace;">{cells}</div></div>')


def result_html(o: "Outcome") -> str:
    if not o.ok:
        return error_html(o.file, o.error or "unknown error")
    assert o.probability is not None and o.threshold is not None
    above = bool(o.above)
    color = _ABOVE if above else _BELOW
    verdict = f"{o.positive}-looking" if above else f"{o.negative}-looking"
    ps, ts = fmt_prob_pair(o.probability, o.threshold)
    side = "above" if above else "below"
    pct = max(0.0, min(100.0, o.probability * 100))
    tpct = max(0.0, min(100.0, o.threshold * 100))
    bar = (
        '<div style="position:relative;margin:26px 0 4px 0;height:18px;border-radius:9px;background:#e6e6e6;">'
        f'<div style="position:absolute;left:0;top:0;bottom:0;width:{pct:.2f}%;border-radius:9px;'
        f'background:{color};"></div>'
        f'<div title="operating threshold" style="position:absolute;left:calc({tpct:.2f}% - 1px);top:-8px;'
        'bottom:-8px;width:3px;background:#111;"></div>'
        f'<div style="position:absolute;left:{tpct:.2f}%;top:-26px;transform:translateX(-50%);font-size:0.85em;'
        f'white-space:nowrap;color:#111;">threshold {ts}</div>'
        '</div>'
        '<div style="display:flex;justify-content:space-between;font-size:0.8em;color:#555;">'
        '<span>0 (benign-looking)</span><span>probability of malignancy</span><span>1</span></div>'
    )
    site = (f'<div class="bcd-site" style="margin-top:6px;font-size:0.9em;color:#333;">Operating point: site '
            f'profile <b>{esc(o.site)}</b> (this site\'s own threshold, not the export\'s)</div>' if o.site else "")
    engine = f"{esc(o.engine)}, " if o.engine else ""
    timing = (f"Inference {fmt_ms(o.seconds)} on this computer ({esc(o.variant)}, {engine}"
              f"{o.threads} thread{'s' if o.threads != 1 else ''}); "
              f"{fmt_ms(o.total_seconds)} including reading the file and drawing the heatmap.")
    notes = "".join(f'<div style="margin-top:6px;color:{_WARN};">&#9888; {esc(n)}</div>' for n in o.notes)
    body = (
        f'<div style="font-size:0.9em;color:#555;">{esc(o.file)}</div>'
        f'{ood_warning_html(bool(o.roi and o.roi.get("x") is not None)) if o.out_of_distribution else ""}'
        f'<div class="bcd-verdict" style="font-size:1.6em;font-weight:800;color:{color};">{esc(verdict.capitalize())}</div>'
        f'<div class="bcd-probability" style="font-size:1.1em;margin-top:4px;">probability {ps} &mdash; '
        f'threshold {ts} &rarr; <b>{side}</b>: {esc(verdict)}</div>'
        f'{bar}{site}{roi_html(o)}{region_html(o)}{frames_html(o)}'
        f'<div class="bcd-time" style="margin-top:8px;font-size:0.9em;color:#333;">{timing}</div>'
        f'{notes}'
    )
    return _card(body, color)


# ---------------------------------------------------------------------- variants


def variant_label(v: "Variant", with_model: bool = False) -> str:
    """The picker's text for a variant; with several models it starts with the model's
    name ("bus-vgg16-w50-128-slim30 · onnx-int8 · ONNX int8 · 1.2 MB")."""
    name = v.key if with_model else v.name
    kind = f"{v.format.upper()} {v.precision}"
    if v.servable:
        site = f" · site profile {v.site.name}" if v.site is not None else ""
        return f"{name} · {kind} · {fmt_size(v.size_bytes)}{site}"
    return f"⚠ {name} · FAILED export checks (not served)" if v.status == "failed" else \
        f"⚠ {name} · not produced ({v.status})"


def variant_choices(service: "DemoService") -> list[tuple[str, str]]:
    return [(variant_label(v, service.multi), v.key) for v in service.variants]


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f} %"


def _cost(model: "Model") -> str:
    c = model.cost or {}
    parts = [f"{fmt_count(c['macs'])} MACs per image" if c.get("macs") is not None else "",
             f"{fmt_count(c['params'])} parameters" if c.get("params") is not None else ""]
    return ", ".join(p for p in parts if p)


def threshold_sentence(model: "Model") -> str:
    t = model.threshold_info
    chosen = f", chosen on the {md_cell(t['chosen_on'])}" if t.get("chosen_on") else ""
    policy = f" ({md_cell(t['policy'])})" if t.get("policy") else ""
    return (f"Operating threshold **{model.threshold:.4g}**{chosen}{policy}: a probability at or above it "
            f"reads as {md_cell(model.positive)}-looking.")


def site_sentence(v: "Variant", service: "DemoService") -> str:
    """Which operating point this variant's calls use, when a site profile is loaded."""
    site = getattr(service, "site", None)
    if site is None:
        return ""
    if v.site is None:
        owner = next((w.key for w in service.variants if w.site is not None), "another variant")
        return (f"This variant uses its export's threshold: site profile **{md_cell(site.name)}** applies to "
                f"{md_cell(owner)} only.")
    d = site.data
    recal = (f", on the {md_cell(site.recalibration.method)}-recalibrated probability"
             if site.recalibration.method != "none" else "")
    fitted = (f", fitted on {d['n']} images of the site's own data ({d.get('n_malignant')} malignant, "
              f"{d.get('n_benign')} benign)" if d.get("n") is not None else "")
    return (f"Operating point: site profile **{md_cell(site.name)}**: threshold **{site.threshold:.4g}** "
            f"({md_cell(site.policy)}{recal}){fitted}. It replaces the export's threshold for this variant.")


def parity_markdown(service: "DemoService", name: str | None) -> str:
    v = service.variant(name)
    if v is None:
        return "Pick a variant."
    lines = [f"**{md_cell(v.key)}**: {md_cell(v.format.upper())} {md_cell(v.precision)}, "
             f"file {fmt_size(v.size_bytes)}", ""]
    site = site_sentence(v, service)
    if site:
        lines += [site, ""]
    if service.multi:
        model = service.model_of(v.key)
        cost = _cost(model)
        lines += [f"Model **{md_cell(model.name)}**{f' ({cost})' if cost else ''}. "
                  + threshold_sentence(model), ""]
        b = model.baseline
        if b.get("auc") is not None:
            on = (f" on the {md_cell(b['data'])}" if b.get("data")
                  else f" on {b['n']} images" if b.get("n") is not None else "")
            lines += [f"Its original Keras model: AUC {_num(b['auc'])}{on}.", ""]
    if v.servable:
        lines.append("Status **ok**: passed the export's checks against the original model.")
    else:
        reason = f": {md_cell(v.reason)}" if v.reason else ""
        lines.append(f"⚠ Status **{md_cell(v.status.upper())}**{reason}. This variant is **not served**: "
                     "pick one marked ok.")
    p = v.parity
    if p is not None:
        original = f"original (Keras) model {md_cell(v.model)}" if service.multi else "original (Keras) model"
        lines += [
            "",
            f"Agreement with the {original} on {p.n} held-out images:",
            "",
            "| measure | this variant |",
            "|---|---|",
            f"| AUC | {_num(p.auc)} (original {_num(p.auc_original)}, drop {_num(p.auc_drop)}) |",
            f"| decisions flipped at the threshold | {_pct(p.flip_rate)} |",
            f"| max &#124;Δp&#124; vs original | {_num(p.max_abs_diff, 4)} |",
        ]
        if p.cam_correlation is not None:
            lines.append(f"| Grad-CAM correlation | {_num(p.cam_correlation)} |")
        lines.append(f"| file size | {fmt_size(v.size_bytes)} |")
    elif v.servable:
        lines += ["", "No parity figures (a lone model file without an export manifest)."]
    median, n = service.median_ms(v.key)
    if median is not None:
        lines += ["", f"Speed here: median inference {median:.1f} ms over the last {n} image(s)."]
    if v.notes:
        lines += ["", "Notes: " + "; ".join(md_cell(n) for n in v.notes)]
    return "\n".join(lines)


def variants_table_markdown(service: "DemoService") -> str:
    multi = service.multi
    head = "| model " if multi else ""
    rows = [f"{head}| variant | status | size | AUC (original) | flips | max &#124;Δp&#124; | median inference here |",
            f"{'|---' if multi else ''}|---|---|---|---|---|---|---|"]
    for v in service.variants:
        p = v.parity
        median, n = service.median_ms(v.key)
        speed = f"{median:.1f} ms (n={n})" if median is not None else "not run yet"
        status = "ok" if v.servable else f"⚠ {v.status}"
        auc = f"{_num(p.auc)} ({_num(p.auc_original)})" if p is not None else "n/a"
        model = f"| {md_cell(v.model)} " if multi else ""
        rows.append(f"{model}| {md_cell(v.name)} | {status} | {fmt_size(v.size_bytes)} | {auc} | "
                    f"{_pct(p.flip_rate) if p else 'n/a'} | {_num(p.max_abs_diff, 4) if p else 'n/a'} | "
                    f"{speed if v.servable else '—'} |")
    return "\n".join(rows)


def adapted_sentence(model: "Model") -> str:
    """Said wherever the model is described: its weights were changed for one site's scanner."""
    return (f"\n\nModel {md_cell(model.name)} is **{md_cell(model.adapted)}**; its threshold and checks are its "
            "parent's.") if model.adapted else ""


def model_summary_markdown(service: "DemoService") -> str:
    """One model: its threshold. Several: one row per model (threshold, the original
    Keras model's AUC, arithmetic per image when recorded). A site-adapted model says so."""
    site = ""
    if getattr(service, "site", None) is not None:
        owner = next((v for v in service.variants if v.site is not None), None)
        if owner is not None:
            site = "\n\n" + site_sentence(owner, service).replace("this variant", f"variant {md_cell(owner.key)}")
    site += "".join(adapted_sentence(m) for m in service.models)
    if not service.multi:
        return threshold_sentence(service.models[0]) + site
    has_cost = any(m.cost for m in service.models)
    rows = ["Models served (each variant uses its own model's threshold):", "",
            "| model | threshold | original AUC (n) |" + (" MACs / params |" if has_cost else ""),
            "|---|---|---|" + ("---|" if has_cost else "")]
    for m in service.models:
        b = m.baseline
        auc = f"{_num(b.get('auc'))} ({b['n']})" if b.get("n") is not None else _num(b.get("auc"))
        cost = ""
        if has_cost:
            c = m.cost or {}
            cost = f" {fmt_count(c.get('macs'))} / {fmt_count(c.get('params'))} |"
        rows.append(f"| {md_cell(m.name)} | {m.threshold:.4g} | {auc} |{cost}")
    return "\n".join(rows) + site
