"""The HTML of the one-page report and of a folder's index (runtime/report.py fills them).

Self-contained pages: inline CSS, images as data URIs, no script that runs and nothing
fetched, so a report can be filed with the exam, mailed or opened years later offline.
The report prints to one A4 page: every block has a fixed or bounded height and the whole
sums to well under the printable 273 mm (297 mm less two 12 mm margins); long texts (an
error message, a file name) wrap and are shortened before they could push a second page.

Every text from outside (file names, error messages, profile names) is escaped here.
Standard library only.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from urllib.parse import quote

from runtime.host import DISCLAIMER

ABOVE = "#b3261e"         # red: at or above the threshold (the demo's colours)
BELOW = "#1f5fa8"         # blue: below it
WARN = "#8a5a00"
MAX_TEXT = 400            # characters of one outside text shown (an error message, a path)

_CSS = """
@page { size: A4; margin: 12mm; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; background: #e9e9e9; color: #111;
       font: 9.5pt/1.35 "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; }
.sheet { width: 210mm; min-height: 297mm; margin: 6mm auto; padding: 12mm; background: #fff; box-shadow: 0 1px 6px #0004; }
@media print { body { background: #fff; } .sheet { width: auto; min-height: 0; margin: 0; padding: 0; box-shadow: none; } }
h1 { font-size: 14pt; margin: 0; }
.sub { color: #444; font-size: 8.5pt; margin-top: 1mm; overflow-wrap: anywhere; }
.disclaimer { margin: 3mm 0; padding: 2mm 3mm; border: 1.5px solid #111; border-radius: 2mm;
              font-weight: 700; font-size: 10pt; }
.panels { display: grid; grid-template-columns: 1fr 1fr; gap: 5mm; }
.panel figure { margin: 0; }
.panel img, .panel .empty { display: block; width: 100%; height: 62mm; object-fit: contain; background: #000; }
.panel .empty { display: flex; align-items: center; justify-content: center; padding: 6mm; text-align: center;
                color: #ddd; font-size: 9pt; }
.panel figcaption { font-size: 8pt; color: #333; margin-top: 1.2mm; min-height: 7mm; }
.swatch { display: inline-block; width: 3.2mm; height: 3.2mm; border: 0.6mm solid; vertical-align: -0.5mm;
          margin: 0 1mm 0 2mm; }
.result { margin-top: 3mm; padding: 3mm 4mm; border: 1.5px solid; border-radius: 2mm; break-inside: avoid; }
.call { font-size: 16pt; font-weight: 800; }
.sentence { margin-top: 1mm; }
.bar { display: block; width: 100%; height: 13mm; margin-top: 1mm; }
.ood { margin-top: 2mm; padding: 2mm 3mm; background: #fde7e4; border: 1px solid #b3261e; border-radius: 1.5mm;
       color: #5c1a12; font-weight: 700; }
.error { font-size: 12pt; font-weight: 800; color: #8a5a00; }
.reason { margin-top: 1mm; overflow-wrap: anywhere; }
table.facts { width: 100%; border-collapse: collapse; margin-top: 3mm; font-size: 8.5pt; break-inside: avoid; }
table.facts th { text-align: left; width: 36mm; white-space: nowrap; vertical-align: top; padding: 0.6mm 2mm 0.6mm 0; color: #333; }
table.facts td { padding: 0.6mm 0; overflow-wrap: anywhere; }
table.facts .swatch { margin-left: 0; }
table.facts tr + tr th, table.facts tr + tr td { border-top: 0.3mm solid #ddd; }
.mono { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 7.8pt; }
footer { margin-top: 2.5mm; font-size: 7pt; color: #444; }
"""

_INDEX_CSS = """
body { margin: 0; padding: 8mm; font: 10pt/1.4 "DejaVu Sans", Arial, Helvetica, sans-serif; color: #111; }
h1 { font-size: 15pt; margin: 0 0 2mm 0; }
.sub { color: #444; font-size: 9pt; overflow-wrap: anywhere; }
.disclaimer { margin: 3mm 0; padding: 2mm 3mm; border: 1.5px solid #111; border-radius: 2mm; font-weight: 700; }
table { border-collapse: collapse; margin-top: 3mm; }
th, td { padding: 1mm 3mm; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.call { white-space: nowrap; }
td.error { color: #8a5a00; overflow-wrap: anywhere; max-width: 110mm; }
.flag { color: #b3261e; font-weight: 700; }
"""


def esc(text: object, limit: int | None = MAX_TEXT) -> str:
    """Escaped text, shortened to `limit` characters (an outside text must not run or
    push the page past one sheet)."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit - 1] + "\u2026"
    return html.escape(text, quote=True)


@dataclass
class Panel:
    """One picture: a data URI, or None and the reason there is none."""

    title: str
    uri: str | None
    caption: str = ""             # already HTML (a legend with swatches)
    missing: str = ""


@dataclass
class Result:
    """The call, or the reason there is none."""

    ok: bool
    call: str = ""                # e.g. "Malignant-looking"
    above: bool = False
    probability: float | None = None
    threshold: float | None = None
    shown: tuple[str, str] = ("", "")   # probability and threshold as printed
    threshold_whose: str = ""     # "the model's" / "site profile 'x'"
    sentence: str = ""
    ood_warning: str = ""         # non-empty: the image is flagged out of distribution
    error: str = ""


@dataclass
class Page:
    title: str
    subtitle: str
    panels: list[Panel]
    result: Result
    facts: list[tuple[str, str]]  # (label, value as HTML)
    data: dict = field(default_factory=dict)   # the report's facts, machine readable


def report_page(page: Page) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(page.title)}</title>"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        f"<style>{_CSS}</style></head>\n<body><main class=\"sheet\">\n"
        f"<header><h1>{esc(page.title)}</h1><div class=\"sub\">{page.subtitle}</div></header>\n"
        f"<div class=\"disclaimer\" id=\"bcd-disclaimer\">{esc(DISCLAIMER, None)} The call below is decision "
        "support for the reading clinician, who makes the diagnosis.</div>\n"
        f"<section class=\"panels\">{''.join(_panel(p) for p in page.panels)}</section>\n"
        f"{_result(page.result)}\n"
        f"<table class=\"facts\" id=\"bcd-facts\">{''.join(_fact(k, v) for k, v in page.facts)}</table>\n"
        f"<footer>{esc(DISCLAIMER, None)} Made by breast-cancer-edge (`bcd report`). The heat map shows where the "
        "model found the evidence it used, not where a lesion is; the probability is the model's, not a risk "
        "estimate for this patient.</footer>\n"
        f"{_data_block(page.data)}\n"
        "</main></body></html>\n"
    )


def _panel(p: Panel) -> str:
    body = (f"<img src=\"{p.uri}\" alt=\"{esc(p.title)}\">" if p.uri is not None
            else f"<div class=\"empty\">{esc(p.missing)}</div>")
    return (f"<div class=\"panel\"><figure>{body}<figcaption><b>{esc(p.title)}</b>"
            f"{'. ' if p.caption else ''}{p.caption}</figcaption></figure></div>")


def _result(r: Result) -> str:
    if not r.ok:
        return ("<section class=\"result\" id=\"bcd-result\" style=\"border-color:#e0b44a\">"
                "<div class=\"error\">&#9888; No result for this image</div>"
                f"<div class=\"reason\" id=\"bcd-error\">{esc(r.error)}</div>"
                "<div class=\"sentence\">Nothing was classified; the model's information is below.</div></section>")
    colour = ABOVE if r.above else BELOW
    ood = f"<div class=\"ood\" id=\"bcd-ood\">&#9888; {esc(r.ood_warning)}</div>" if r.ood_warning else ""
    return (f"<section class=\"result\" id=\"bcd-result\" style=\"border-color:{colour}\">"
            f"<div class=\"call\" id=\"bcd-call\" style=\"color:{colour}\">Model's call: {esc(r.call)}</div>"
            f"<div class=\"sentence\">Probability of malignancy <b id=\"bcd-probability\" "
            f"data-value=\"{r.probability!r}\">{r.shown[0]}</b>, threshold <b id=\"bcd-threshold\" "
            f"data-value=\"{r.threshold!r}\">{r.shown[1]}</b> ({esc(r.threshold_whose, 100)}): {esc(r.sentence)}</div>"
            f"{_bar(r, colour)}{ood}</section>")


def _bar(r: Result, colour: str) -> str:
    """The probability as a bar on a 0..1 scale, the threshold as a marked line."""
    p = min(max(float(r.probability), 0.0), 1.0)
    t = min(max(float(r.threshold), 0.0), 1.0)
    left, width = 20, 960                         # the scale's x range in the 1000-wide view box
    px, tx = left + p * width, left + t * width
    anchor = "start" if t < 0.12 else "end" if t > 0.88 else "middle"
    ticks = "".join(f"<line x1=\"{left + v * width}\" y1=\"52\" x2=\"{left + v * width}\" y2=\"58\" "
                    f"stroke=\"#555\" stroke-width=\"2\"/><text x=\"{left + v * width}\" y=\"74\" "
                    f"text-anchor=\"{'start' if v == 0 else 'end' if v == 1 else 'middle'}\" font-size=\"17\" "
                    f"fill=\"#444\">{v:g}</text>" for v in (0, 0.25, 0.5, 0.75, 1))
    return (f"<svg class=\"bar\" id=\"bcd-bar\" viewBox=\"0 0 1000 80\" role=\"img\" "
            f"aria-label=\"probability {r.shown[0]} against threshold {r.shown[1]}\" "
            "xmlns=\"http://www.w3.org/2000/svg\">"
            f"<rect x=\"{left}\" y=\"28\" width=\"{width}\" height=\"24\" rx=\"12\" fill=\"#e6e6e6\"/>"
            f"<rect x=\"{left}\" y=\"28\" width=\"{px - left:.1f}\" height=\"24\" rx=\"12\" fill=\"{colour}\"/>"
            f"<line x1=\"{tx:.1f}\" y1=\"20\" x2=\"{tx:.1f}\" y2=\"60\" stroke=\"#111\" stroke-width=\"4\"/>"
            f"<text x=\"{tx:.1f}\" y=\"15\" text-anchor=\"{anchor}\" font-size=\"18\" fill=\"#111\">"
            f"threshold {r.shown[1]}</text>{ticks}</svg>")


def _fact(label: str, value: str) -> str:
    return f"<tr><th>{esc(label)}</th><td>{value}</td></tr>"


def _data_block(data: dict) -> str:
    """The report's facts as JSON for programs (a data block: browsers never run it)."""
    text = json.dumps(data, allow_nan=False, sort_keys=False).replace("<", "\\u003c")
    return f"<script type=\"application/json\" id=\"bcd-report-data\">{text}</script>"


# ---------------------------------------------------------------------- the index


@dataclass
class IndexRow:
    file: str
    report: str                   # the report's file name, beside index.html
    probability: str = ""
    threshold: str = ""
    call: str = ""
    ood: str = ""
    error: str = ""


_FLAG = ' class="flag"'


def index_page(title: str, subtitle: str, rows: list[IndexRow]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("file", "probability", "threshold", "call",
                                             "out of distribution", "error"))
    body = "".join(
        f"<tr><td><a href=\"{quote(r.report)}\">{esc(r.file)}</a></td><td class=\"num\">{r.probability}</td>"
        f"<td class=\"num\">{r.threshold}</td><td class=\"call\">{esc(r.call)}</td>"
        f"<td{_FLAG if r.ood == 'flagged' else ''}>{esc(r.ood)}</td>"
        f"<td class=\"error\">{esc(r.error)}</td></tr>" for r in rows)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><meta name=\"referrer\" content=\"no-referrer\">"
        f"<style>{_INDEX_CSS}</style></head>\n<body>\n"
        f"<h1>{esc(title)}</h1><div class=\"sub\">{subtitle}</div>\n"
        f"<div class=\"disclaimer\">{esc(DISCLAIMER, None)} Each call is decision support for the reading "
        "clinician.</div>\n"
        f"<table id=\"bcd-index\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n"
        "</body></html>\n"
    )
