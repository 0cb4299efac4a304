"""report.html and sweep.html: a run's (or a sweep's) Markdown report as one self-contained page.

The page is rendered from the Markdown the run folder already holds, so it says exactly what
report.md says: a table of contents from its headings, every figure inlined as a data URI (the file
opens from disk, needs no network and survives being mailed), a tooltip on each metric's column
heading and a closing glossary of what the numbers mean, the versions and machine the run was made
with, and print styles. A figure the folder no longer holds is marked missing in its place.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from fedsim.ray_setup import local_cpus

PACKAGES = ("fedsim", "flwr", "ray", "torch", "opacus", "monai", "numpy", "scikit-learn")

GLOSSARY: dict[str, str] = {
    "AUC": "Area under the ROC curve of a membership (or attribute) attack: 0.5 means it cannot tell members "
           "from non-members, 1.0 that it always can. Read it beside the null AUC or the no-model baseline.",
    "null AUC": "The loss attack against a model that learned nothing but the members' mean: what the evaluation "
                "set's composition alone gives. An attack leaks only what it scores above this.",
    "balanced acc.": "Mean of the true-positive and true-negative rates at the attack's best threshold; 0.5 is "
                     "chance.",
    "TPR@1%FPR": "Share of members the attack finds while wrongly accusing at most 1% of non-members: how often "
                 "it is confidently right about someone.",
    "TPR@0.1%FPR": "As TPR@1%FPR at 0.1% false positives. With fewer than 1,000 non-members it is the TPR at zero "
                   "false positives.",
    "empirical ε": "A 95%-confidence lower bound on the differential-privacy ε the model can have, from the "
                   "attack's ROC. A correct DP accountant's ε is never below it.",
    "PSNR": "Peak signal-to-noise ratio of a reconstruction against the real scan, in dB; higher is closer.",
    "gain": "PSNR of the reconstruction minus that of the population prior (the mean scan), in dB: 0 dB means the "
            "attack recovered nothing about this patient beyond what the population already tells.",
    "SSIM": "Structural similarity of a reconstruction and the real scan, 0 to 1; below about 0.3 a "
            "reconstruction is generally unrecognisable.",
    "re-id": "Share of reconstructions whose nearest scan in a pool of patients is the patient's own; chance is "
             "one over the pool size.",
    "MAE": "Mean absolute error of the predicted brain age, in years.",
    "Dice": "Overlap of a predicted and the true segmentation, 0 (none) to 1 (identical).",
    "ε": "DP-SGD's privacy budget from the Opacus accountant at the stated δ: the smaller, the more private.",
}


def provenance() -> dict[str, Any]:
    """What a run was made with: package versions, Python and machine (kept in summary.json)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return {"versions": versions, "machine": f"{platform.system()} {platform.machine()}, {local_cpus()} CPUs"}


def inline_images(body: str, base: Path) -> str:
    """Every <img src="relative path"> as a data URI read from `base`; a missing file is marked."""
    def embed(match: re.Match[str]) -> str:
        tag, src = match.group(0), html.unescape(match.group(2))
        path = base / src
        if src.startswith(("data:", "http://", "https://")):
            return tag
        if not path.is_file():
            return f'<p class="missing">figure missing: {html.escape(src)}</p>'
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return tag.replace(match.group(1), f'src="data:{mime};base64,{data}"')
    return re.sub(r'<img[^>]*?(src="([^"]*)")[^>]*>', embed, body)


def _annotate_headings(body: str) -> tuple[str, list[tuple[str, str]]]:
    """A tooltip on every table heading that names a glossary metric; the metrics the page uses."""
    used: dict[str, str] = {}
    terms = sorted(GLOSSARY, key=len, reverse=True)  # "null AUC" before "AUC"

    def heading(match: re.Match[str]) -> str:
        text = match.group(2)
        plain = html.unescape(re.sub(r"<[^>]+>", "", text))
        for term in terms:
            if re.search(rf"(?<![\w-]){re.escape(term)}(?![\w-])", plain, flags=re.IGNORECASE):
                used.setdefault(term, GLOSSARY[term])
                return f'{match.group(1)}<abbr title="{html.escape(GLOSSARY[term])}">{text}</abbr></th>'
        return match.group(0)
    body = re.sub(r"(<th(?:\s[^>]*)?>)(.*?)</th>", heading, body, flags=re.DOTALL)  # <th>, not <thead>
    return body, [(t, used[t]) for t in GLOSSARY if t in used]


def render_page(markdown_text: str, base: Path, *, title: str, kind: str, source: str,
                made_with: dict[str, Any] | None = None) -> str:
    """The self-contained HTML page of one Markdown report whose figures are relative to `base`."""
    import jinja2
    import markdown

    converter = markdown.Markdown(extensions=["tables", "toc", "sane_lists"],
                                  extension_configs={"toc": {"toc_depth": "2-3"}})
    # HTML in the report's text (an error such as "<lambda>", a scenario description) is shown as
    # text, never passed through: the page is mailed around and must stay inert and self-contained
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    body = converter.convert(markdown_text)
    body, glossary = _annotate_headings(inline_images(body, base))
    env = jinja2.Environment(loader=jinja2.PackageLoader("fedsim", "templates"), autoescape=True)
    prov = made_with or {**provenance(), "note": "versions at report time: the run recorded none"}
    return env.get_template("report.html.j2").render(title=title, kind=kind, source=source, toc=converter.toc,
                                                    body=body, glossary=glossary, provenance=prov,
                                                    written=time.strftime("%Y-%m-%d %H:%M:%S"))


def write_page(markdown_path: Path, html_path: Path, *, title: str, kind: str,
               made_with: dict[str, Any] | None = None) -> Path:
    """Render `markdown_path` (figures relative to its folder) to `html_path`, atomically."""
    from fedsim.run_folder import atomic_write_text

    page = render_page(markdown_path.read_text(), markdown_path.parent, title=title, kind=kind,
                       source=str(markdown_path.parent), made_with=made_with)
    atomic_write_text(html_path, page)
    return html_path
