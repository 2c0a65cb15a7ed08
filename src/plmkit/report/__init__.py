"""Turn DIR/<recipe>/results.json files into DIR/index.md and DIR/index.html.

Both open with a one-screen summary: every system of :data:`plmkit.systems.SYSTEMS`, its status, each
recipe's headline number beside the paper's claim and the peer's, whether this run was quick or full,
its runtime, and the last recorded full run (``docs/results/NAME.json``, see :mod:`plmkit.report.records`).
Then one section per recipe: its tables and plots, and the recorded full run's tables, each labelled
with where it came from.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

from .._io import write_text
from .records import load_recorded, recorded_dir

NO_FULL = "no full run recorded"
_AUTO = object()


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every DIR/<name>/results.json, by name (unreadable files skipped)."""
    out = []
    for p in sorted(Path(out_dir).glob("*/results.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out


def _secs(v: Any) -> str | None:
    return None if v is None else f"{float(v):.0f}"


def _headline(res: dict[str, Any] | None) -> dict[str, Any]:
    return (res or {}).get("headline") or {}


def _short_status(status: str) -> str:
    return status.split(":")[0]


def summary_rows(results: list[dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe (this run's or a recorded full run's) and per system without one, in SYSTEMS order."""
    from ..systems import SYSTEMS

    by_system: dict[str, list[str]] = {}
    current = {r["name"]: r for r in results}
    for name, r in {**recorded, **current}.items():
        by_system.setdefault(r.get("system", ""), []).append(name)
    rows = []
    for key, sys_ in SYSTEMS.items():
        names = sorted(by_system.get(key, [])) or [None]
        for name in names:
            cur, full = current.get(name), recorded.get(name)
            h = _headline(cur) or _headline(full)
            if cur is None:
                run = "not run" if name else "no recipe yet"
            else:
                run = cur.get("budget") or ("quick" if cur.get("quick", True) else "full")
                if cur.get("status", "ok") != "ok":
                    run += " (failed)"
            rows.append({
                "system": sys_.name.split(":")[0], "key": key, "status": _short_status(sys_.status), "recipe": name,
                "metric": h.get("metric", ""), "ours": _headline(cur).get("ours") if cur else None,
                "paper": h.get("paper"), "peer": h.get("peer"), "run": run,
                "runtime_s": _secs(cur.get("runtime_s")) if cur else None,
                "full": (f"{_fmt(_headline(full).get('ours'))} ({full.get('date', '')[:10]}, "
                         f"{_secs(full.get('runtime_s'))} s)") if full else (NO_FULL if name else ""),
            })
    for name, r in sorted(current.items()):  # a recipe whose system key is not in SYSTEMS
        if r.get("system") not in SYSTEMS:
            rows.append({"system": r.get("system", "?"), "key": r.get("system", "?"), "status": "?", "recipe": name,
                         "metric": _headline(r).get("metric", ""), "ours": _headline(r).get("ours"),
                         "paper": _headline(r).get("paper"), "peer": _headline(r).get("peer"),
                         "run": r.get("budget", "quick"), "runtime_s": _secs(r.get("runtime_s")),
                         "full": NO_FULL})
    return rows


SUMMARY_COLUMNS = ("system", "status", "recipe", "headline number", "ours", "paper", "peer", "this run", "s",
                   "last full run (docs/results)")


def _summary_values(row: dict[str, Any]) -> list[Any]:
    return [row["system"], row["status"], row["recipe"] or "-", row["metric"], row["ours"], row["paper"],
            row["peer"], row["run"], row["runtime_s"], row["full"]]


def _env_line(r: dict[str, Any]) -> str:
    env = r.get("environment", {})
    cpu = env.get("cpu_info", {})
    parts = [f"torch {env.get('torch', '?')}", f"{env.get('threads', '?')} threads"]
    if cpu:
        parts.append(f"{cpu.get('cpu', '?')} ({', '.join(cpu.get('native_bf16') or ['no native bf16'])}, "
                     f"default dtype {env.get('fast_dtype', '?')})")
    return ", ".join(parts)


def _caches(r: dict[str, Any]) -> list[dict[str, Any]]:
    c = r.get("cache")
    if isinstance(c, dict) and "key" in c:
        return [c]
    if isinstance(c, dict):
        return [dict(v, name=k) for k, v in c.items() if isinstance(v, dict)]
    return list(c or [])


def _cache_line(r: dict[str, Any]) -> str:
    cs = _caches(r)
    if not cs:
        return ""
    return "; ".join(f"{c.get('name', c.get('producer', '?'))} {'hit' if c.get('hit') else 'built'} "
                     f"({c.get('key', '')[:12]})" for c in cs)


def _markdown(results: list[dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> str:
    rows = summary_rows(results, recorded)
    total = sum(r.get("runtime_s") or 0 for r in results)
    lines = ["# plmkit reproduction report", "",
             f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; {len(results)} "
             f"recipe(s) run here in {total:.0f} s. 'quick' numbers come from the small demo budget of this run; "
             "'last full run' from the recorded full run in docs/results/NAME.json.", "",
             "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(_cell(v) for v in _summary_values(r)) + " |" for r in rows]
    lines.append("")
    for r in results:
        lines += _md_section(r, recorded.get(r["name"]))
    for name, full in recorded.items():
        if name not in {r["name"] for r in results}:
            lines += _md_section(full, full, only_recorded=True)
    return "\n".join(lines)


def _md_tables(tables: list[dict[str, Any]], label: str) -> list[str]:
    lines = []
    for t in tables:
        lines += [f"**{t['title']}** ({label})", "", "| " + " | ".join(map(_cell, t["columns"])) + " |",
                  "|" + "---|" * len(t["columns"])]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t["rows"]]
        lines.append("")
    return lines


def _md_section(r: dict[str, Any], full: dict[str, Any] | None, only_recorded: bool = False) -> list[str]:
    label = "full run" if not r.get("quick", True) else "quick run"
    lines = [f"## {r['title']}", "", f"*Paper's claim:* {r['paper_claim']}", ""]
    if not only_recorded:
        lines += [f"*This run ({r.get('budget', 'quick')}):* `{r['command']}` on {r.get('date', '?')[:10]} in "
                  f"{r['runtime_s']} s ({_env_line(r)})", ""]
        if r.get("status", "ok") != "ok":
            lines += [f"**Failed:** {r.get('error', '')} (traceback in {r['name']}/error.txt)", ""]
        if _cache_line(r):
            lines += [f"*Cache:* {_cache_line(r)}", ""]
        lines += _md_tables(r.get("tables", []), label)
        lines += [f"![{p}]({r['name']}/{p})" for p in r.get("plots", [])]
        lines += [""] + [f"- {n}" for n in r.get("notes", [])] + [""]
    if full:
        lines += [f"### Last recorded full run ({Path(full.get('recorded_file', '')).name})", "",
                  f"`{full['command']}` on {full.get('date', '?')[:10]} in {full['runtime_s']} s ({_env_line(full)})",
                  ""]
        lines += _md_tables(full.get("tables", []), f"full run, recorded {full.get('date', '?')[:10]}")
    else:
        lines += [f"*Full run:* {NO_FULL} (run `plmkit reproduce {r['name']}` to record one).", ""]
    return lines + [f"Citation: {r['citation']}", ""]


_CSS = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "th{background:#eee}img{max-width:100%}code{background:#f4f4f4}caption{text-align:left;font-size:13px}"
        ".quick{color:#8a5a00}.full{color:#05620f}.failed{color:#b00}.muted{color:#777}"
        "#summary td{font-size:12px;padding:2px 6px;white-space:nowrap;max-width:190px;overflow:hidden;"
        "text-overflow:ellipsis}#summary tr.none td{color:#999}")


def _html_table(columns, rows, caption: str = "", cls: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(_fmt(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table class='{cls}'>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(results: list[dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> str:
    e = html.escape
    rows = summary_rows(results, recorded)
    total = sum(r.get("runtime_s") or 0 for r in results)
    anchors = {r["name"] for r in results} | set(recorded)
    srows = []
    for row in rows:
        raw = [_fmt(v) for v in _summary_values(row)]
        vals = [f"<span title='{e(v)}'>{e(v)}</span>" if len(v) > 40 else e(v) for v in raw]
        if row["recipe"] in anchors:
            vals[2] = f"<a href='#{e(row['recipe'])}'>{vals[2]}</a>"
        run_cls = "failed" if "failed" in row["run"] else row["run"].split()[0]
        vals[7] = f"<span class='{e(run_cls)}'>{vals[7]}</span>"
        tr = "<tr>" if row["recipe"] else "<tr class='none'>"
        srows.append(tr + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>plmkit reproduction report</title>",
             f"<style>{_CSS}</style></head><body>", "<h1>plmkit reproduction report</h1>",
             f"<p>Generated {e(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds'))}; {len(results)} "
             f"recipe(s) run here in {total:.0f} s. <span class='quick'>quick</span> numbers come from the small demo "
             "budget of this run; <span class='full'>last full run</span> from the recorded full run in "
             "docs/results/NAME.json.</p>",
             "<table id='summary'><thead><tr>" + "".join(f"<th>{e(c)}</th>" for c in SUMMARY_COLUMNS)
             + "</tr></thead><tbody>" + "".join(srows) + "</tbody></table>"]
    done = set()
    for r in results:
        parts += _html_section(r, recorded.get(r["name"]))
        done.add(r["name"])
    for name, full in recorded.items():
        if name not in done:
            parts += _html_section(full, full, only_recorded=True)
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_section(r: dict[str, Any], full: dict[str, Any] | None, only_recorded: bool = False) -> list[str]:
    e = html.escape
    label = "full run" if not r.get("quick", True) else "quick run"
    parts = [f"<h2 id='{e(r['name'])}'>{e(r['title'])}</h2>", f"<p><b>Paper's claim:</b> {e(r['paper_claim'])}</p>"]
    if not only_recorded:
        budget = r.get("budget", "quick")
        parts.append(f"<p><b>This run (<span class='{e(budget)}'>{e(budget)}</span>):</b> <code>{e(r['command'])}"
                     f"</code> on {e(r.get('date', '?')[:10])} in {e(_fmt(r['runtime_s']))} s ({e(_env_line(r))}); "
                     f"<a href='{e(r['name'])}/results.json'>results.json</a></p>")
        if r.get("status", "ok") != "ok":
            parts.append(f"<p class='failed'><b>Failed:</b> {e(r.get('error', ''))} (traceback in "
                         f"{e(r['name'])}/error.txt)</p>")
        if _cache_line(r):
            parts.append(f"<p><b>Cache:</b> {e(_cache_line(r))}</p>")
        parts += [_html_table(t["columns"], t["rows"], f"{t['title']} ({label})", "quick" if r.get("quick", True)
                              else "full") for t in r.get("tables", [])]
        parts += [f"<p><img src='{e(r['name'])}/{e(p)}' alt='{e(p)}'></p>" for p in r.get("plots", [])]
        notes = r.get("notes", [])
        if notes:
            parts += ["<ul>"] + [f"<li>{e(n)}</li>" for n in notes] + ["</ul>"]
    if full:
        date = full.get("date", "?")[:10]
        parts.append(f"<h3>Last recorded full run ({e(Path(full.get('recorded_file', '')).name)})</h3>"
                     f"<p class='full'><code>{e(full['command'])}</code> on {e(date)} in "
                     f"{e(_fmt(full['runtime_s']))} s ({e(_env_line(full))})</p>")
        parts += [_html_table(t["columns"], t["rows"], f"{t['title']} (full run, recorded {date})", "full")
                  for t in full.get("tables", [])]
    else:
        parts.append(f"<p class='muted'><b>Full run:</b> {NO_FULL} (run <code>plmkit reproduce {e(r['name'])}"
                     "</code> to record one).</p>")
    parts.append(f"<p><i>{e(r['citation'])}</i></p>")
    return parts


def write_report(out_dir: str | Path, recorded: Any = _AUTO) -> Path:
    """Write index.md and index.html for every results.json under ``out_dir``; returns index.html's path.

    ``recorded``: the folder of recorded full runs (default :func:`records.recorded_dir`; None: none shown)."""
    out = Path(out_dir)
    results = load_results(out)
    full = load_recorded(recorded_dir() if recorded is _AUTO else recorded)
    write_text(out / "index.md", _markdown(results, full))
    return write_text(out / "index.html", _html(results, full))
