"""Turn DIR/<recipe>/results.json files into DIR/index.md and DIR/index.html."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .._io import write_text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|")


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*/results.json"))]


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# plmkit reproduction report", ""]
    for r in results:
        lines += [f"## {r['title']}", "", f"*Paper's claim:* {r['paper_claim']}", "",
                  f"*Measured with:* `{r['command']}` in {r['runtime_s']} s "
                  f"(torch {r['environment']['torch']}, {r['environment']['threads']} threads)", ""]
        for t in r.get("tables", []):
            lines += [f"**{t['title']}**", "", "| " + " | ".join(t["columns"]) + " |",
                      "|" + "---|" * len(t["columns"])]
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t["rows"]]
            lines.append("")
        lines += [f"![{p}]({r['name']}/{p})" for p in r.get("plots", [])]
        lines += [""] + [f"- {n}" for n in r.get("notes", [])] + ["", f"Citation: {r['citation']}", ""]
    return "\n".join(lines)


def _html(results: list[dict[str, Any]]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>plmkit reproduction report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px}th{background:#eee}img{max-width:100%}code{background:#f4f4f4}</style></head><body>",
             "<h1>plmkit reproduction report</h1>"]
    for r in results:
        parts += [f"<h2 id='{e(r['name'])}'>{e(r['title'])}</h2>",
                  f"<p><b>Paper's claim:</b> {e(r['paper_claim'])}</p>",
                  f"<p><b>Measured with:</b> <code>{e(r['command'])}</code> in {r['runtime_s']} s</p>"]
        for t in r.get("tables", []):
            parts.append(f"<table><caption>{e(t['title'])}</caption><tr>"
                         + "".join(f"<th>{e(c)}</th>" for c in t["columns"]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>" for row in t["rows"]]
            parts.append("</table>")
        parts += [f"<p><img src='{e(r['name'])}/{e(p)}' alt='{e(p)}'></p>" for p in r.get("plots", [])]
        parts += ["<ul>"] + [f"<li>{e(n)}</li>" for n in r.get("notes", [])] + ["</ul>",
                                                                                 f"<p><i>{e(r['citation'])}</i></p>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | Path) -> Path:
    """Write index.md and index.html for every results.json under ``out_dir``; returns index.html's path."""
    out = Path(out_dir)
    results = load_results(out)
    write_text(out / "index.md", _markdown(results))
    return write_text(out / "index.html", _html(results))
