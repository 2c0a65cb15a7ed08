"""The report's index.html, rendered by headless Chromium from small fake results: every image loads,
every link resolves, no table is empty; and a report with each fault is caught."""
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from plmkit.report import NO_FULL, write_report
from plmkit.systems import SYSTEMS

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: as root run "
                                "`apt-get install -y chromium` (make setup does it)")

# Appended to a copy of index.html: after load, writes what the browser saw into <pre id=plmkit-check>.
CHECK = """<script>
window.addEventListener('load', () => {
  const out = {images: [], anchors: [], files: [], tables: []};
  for (const img of document.images)
    out.images.push({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0});
  for (const a of document.querySelectorAll('a[href]')) {
    const h = a.getAttribute('href');
    if (h.startsWith('#')) out.anchors.push({href: h, ok: !!document.getElementById(h.slice(1))});
    else out.files.push(h);
  }
  for (const t of document.querySelectorAll('table'))
    out.tables.push({caption: (t.caption || {}).textContent || t.id, cells: t.querySelectorAll('tbody td').length});
  const pre = document.createElement('pre'); pre.id = 'plmkit-check';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""


def _png(path: Path, w: int = 4, h: int = 3) -> None:
    """A real (tiny, grey) PNG without matplotlib."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80" * w for _ in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _fake(out: Path, name: str, system: str, quick: bool = True, rows=(("a", 1.5),), plot: bool = True) -> dict:
    res = {"name": name, "title": f"Recipe {name}", "system": system, "paper_claim": "a claim", "citation": "A. B.",
           "quick": quick, "budget": "quick" if quick else "full", "status": "ok",
           "command": f"plmkit reproduce {name}{' --quick' if quick else ''} --out {out}",
           "date": "2025-01-02T03:04:05+00:00", "runtime_s": 12.5,
           "environment": {"torch": "2.13.0", "threads": 2, "cpu_info": {"cpu": "AMD EPYC", "native_bf16": []},
                           "fast_dtype": "float32"},
           "headline": {"metric": "accuracy", "ours": 0.81, "paper": 0.9, "peer": "peer X 0.7"},
           "cache": {"hit": True, "key": "0123456789abcdef", "producer": "p"},
           "tables": [{"title": "T", "columns": ["k", "v"], "rows": [list(r) for r in rows]}],
           "plots": ["p.png"] if plot else [], "notes": ["a note"]}
    if out is not None:
        (out / name).mkdir(parents=True, exist_ok=True)
        if plot:
            _png(out / name / "p.png")
        (out / name / "results.json").write_text(json.dumps(res))
    return res


def _render(index: Path, tmp: Path) -> dict:
    page = index.with_name("_check.html")
    page.write_text(index.read_text().replace("</body>", CHECK + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
                           "--no-first-run", f"--user-data-dir={tmp / 'chrome-profile'}",
                           "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=60)
    dom = proc.stdout
    start = dom.find("<pre id=\"plmkit-check\">")
    assert start >= 0, f"chromium printed no check result (rc {proc.returncode}): {proc.stderr[-500:]}"
    import html

    seen = json.loads(html.unescape(dom[dom.index(">", start) + 1:dom.index("</pre>", start)]))
    seen["missing_files"] = [f for f in seen["files"] if not (index.parent / f.split("#")[0]).exists()]
    return seen


def _problems(seen: dict) -> list[str]:
    return ([f"image {i['src']} did not load" for i in seen["images"] if not i["ok"]]
            + [f"link {a['href']} has no target" for a in seen["anchors"] if not a["ok"]]
            + [f"link {f} points to a missing file" for f in seen["missing_files"]]
            + [f"table '{t['caption']}' is empty" for t in seen["tables"] if t["cells"] == 0])


def test_report_renders_with_images_links_and_filled_tables(tmp_path):
    out, records = tmp_path / "reports", tmp_path / "records"
    records.mkdir()
    _fake(out, "alpha", "eren")
    _fake(out, "beta", "kepler")
    (records / "alpha.json").write_text(json.dumps(_fake(None, "alpha", "eren", quick=False, plot=False)))
    index = write_report(out, recorded=records)
    seen = _render(index, tmp_path)
    assert _problems(seen) == []
    assert len(seen["images"]) == 2 and seen["anchors"] and "alpha/results.json" in seen["files"]
    summary = next(t for t in seen["tables"] if t["caption"] == "summary")
    assert summary["cells"] >= len(SYSTEMS) * 10  # every system listed, one row each at least
    text = index.read_text()
    assert "Last recorded full run (alpha.json)" in text and NO_FULL in text  # beta has none
    md = (out / "index.md").read_text()
    assert "| EREN | implemented | alpha | accuracy | 0.810 | 0.900 | peer X 0.7 | quick | 12 |" in md


def test_the_render_check_catches_each_fault(tmp_path):
    out = tmp_path / "reports"
    _fake(out, "alpha", "eren")
    _fake(out, "beta", "kepler", rows=())  # an empty table
    index = write_report(out, recorded=None)
    (out / "alpha" / "p.png").unlink()  # a missing image
    (out / "beta" / "results.json").unlink()  # a link to a file that is gone
    index.write_text(index.read_text().replace("href='#alpha'", "href='#nowhere'"))  # a dangling anchor
    problems = _problems(_render(index, tmp_path))
    assert any("image alpha/p.png" in p for p in problems)
    assert any("beta/results.json points to a missing file" in p for p in problems)
    assert any("#nowhere has no target" in p for p in problems)
    assert any("is empty" in p for p in problems)
