"""The report as a document (sections of text, tables, figures, code), written as one
self-contained HTML page and as Markdown with the same content.

HTML embeds every figure (base64 PNG) and its own CSS, so the page is one
file (the Kubeflow UI shows an HTML artifact as it is). Markdown refers to the
figures by file name, beside it in the report folder: the Kubeflow Markdown
viewer truncates documents over 50 KB (kubeflow/pipelines PR 5585), so images
are not inlined there; its tables and text are the HTML page's.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

FOLD_ROWS = 40


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    #: Columns (by index) left-aligned; the others (numbers) are right-aligned.
    left: tuple[int, ...] = (0,)

    @property
    def folded(self) -> bool:
        """Long tables (150 ADE20K classes) are folded in HTML, behind their caption."""
        return len(self.rows) > FOLD_ROWS


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    text: str
    summary: str  # shown folded in HTML, as a heading line in Markdown


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    anchor: str = ""

    def add(self, block) -> Section:
        self.blocks.append(block)
        return self


CSS = """
body{font:15px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1d2330;
max-width:1240px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 10px;padding-bottom:4px;
border-bottom:1px solid #d8dde6}p{margin:8px 0}
nav{margin:10px 0 18px;font-size:13px}nav a{margin-right:14px;color:#2d5fa8;text-decoration:none}
table{border-collapse:collapse;margin:10px 0 6px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e6e9ef;text-align:right;vertical-align:top;
overflow-wrap:anywhere}.wide{overflow-x:auto}
th{background:#f3f5f8;font-weight:600;border-bottom:2px solid #cfd5df}
td.l,th.l{text-align:left}tr:hover td{background:#fafbfc}
caption{caption-side:top;text-align:left;font-size:13px;color:#4a5263;padding:2px 0 6px}
figure{margin:14px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eceff4}
figcaption{font-size:13px;color:#4a5263;margin-top:4px}
details{margin:8px 0}summary{cursor:pointer;color:#2d5fa8}
pre{background:#f6f8fa;padding:10px 12px;font-size:12px;overflow-x:auto;border-radius:4px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.meta{color:#4a5263;font-size:13px}
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, intro: str, sections: list[Section]) -> str:
    out = [f"# {title}\n", f"{intro}\n"]
    for section in sections:
        out.append(f"## {section.title}\n")
        for block in section.blocks:
            if isinstance(block, Text):
                out.append(f"{block.text}\n")
            elif isinstance(block, Table):
                if block.caption:
                    out.append(f"{block.caption}\n")
                lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |"]
                lines.append(
                    "|" + "|".join(":---" if i in block.left else "---:"
                                   for i in range(len(block.header))) + "|"
                )  # fmt: skip
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out.append("\n".join(lines) + "\n")
            elif isinstance(block, Figure):
                out.append(f"![{block.caption}]({block.path.name})\n\n*{block.caption}*\n")
            elif isinstance(block, Code):
                out.append(f"{block.summary}:\n\n```\n{block.text.rstrip()}\n```\n")
    return "\n".join(out)


def _embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def to_html(title: str, intro: str, sections: list[Section]) -> str:
    e = html.escape
    nav = "".join(
        f'<a href="#{s.anchor or f"s{i}"}">{e(s.title)}</a>' for i, s in enumerate(sections)
    )
    body = [f"<h1>{e(title)}</h1>", f'<p class="meta">{e(intro)}</p>', f"<nav>{nav}</nav>"]
    for i, section in enumerate(sections):
        body.append(f'<section id="{section.anchor or f"s{i}"}"><h2>{e(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Text):
                body.append(f"<p>{e(block.text)}</p>")
            elif isinstance(block, Table):

                def cls(i: int, block=block) -> str:
                    return ' class="l"' if i in block.left else ""

                head = "".join(f"<th{cls(i)}>{e(h)}</th>" for i, h in enumerate(block.header))
                rows = "".join(
                    "<tr>" + "".join(f"<td{cls(i)}>{e(str(c))}</td>" for i, c in enumerate(row))
                    + "</tr>"
                    for row in block.rows
                )  # fmt: skip
                caption = f"<caption>{e(block.caption)}</caption>" if block.caption else ""
                table = (
                    f'<div class="wide"><table>{caption}<thead><tr>{head}</tr></thead>{rows}'
                    "</table></div>"
                )
                if block.folded:
                    label = f"{block.caption or 'table'} ({len(block.rows)} rows)"
                    table = f"<details><summary>{e(label)}</summary>{table}</details>"
                body.append(table)
            elif isinstance(block, Figure):
                body.append(
                    f"<figure>{_embed(block.path, block.caption)}"
                    f"<figcaption>{e(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Code):
                body.append(
                    f"<details><summary>{e(block.summary)}</summary>"
                    f"<pre><code>{e(block.text)}</code></pre></details>"
                )
        body.append("</section>")
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
