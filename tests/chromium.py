"""Open an HTML file in headless Chromium: a screenshot, and a probe of its images and script errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "headless Chromium not installed (apt-get install -y chromium; .ci/run installs it)"

_CATCH = (
    "<script>window.__errors=[];window.addEventListener('error',function(e){"
    "window.__errors.push(e.message||('failed to load '+((e.target&&e.target.src)||'?').slice(0,60)));},true);</script>"
)
_PROBE = (
    "<script>window.addEventListener('load',function(){var imgs=Array.from(document.images);"
    "var p=document.createElement('pre');p.id='spml-probe';p.textContent=JSON.stringify({images:imgs.length,"
    "broken:imgs.filter(function(i){return !i.complete||i.naturalWidth===0;}).map(function(i){return i.alt;}),"
    "errors:window.__errors});document.body.appendChild(p);});</script>"
)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run"]
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([CHROMIUM, *flags, *args], check=False, capture_output=True, text=True, timeout=120, env=env)


def probe(html: Path, work: Path) -> dict:
    """``{"images": n, "broken": [alt...], "errors": [message...]}`` of ``html`` after it loaded.

    The page is copied with an error catcher at the top and a probe at the end; the copy's DOM,
    dumped by Chromium after the load event, carries the probe's JSON.
    """
    text = html.read_text()
    text = text.replace("<head>", "<head>" + _CATCH, 1)
    text = text.replace("</body>", _PROBE + "</body>", 1)
    copy = work / f"probe-{html.name}"
    copy.write_text(text)
    done = _chromium("--virtual-time-budget=10000", "--dump-dom", copy.resolve().as_uri())
    found = re.search(r'<pre id="spml-probe">(.*?)</pre>', done.stdout, re.DOTALL)
    if found is None:
        raise AssertionError(f"the probe did not run; chromium said: {done.stderr[-2000:]}")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def screenshot(html: Path, out: Path, height: int = 4000) -> Path:
    """A PNG screenshot of ``html`` at 1200 x ``height`` pixels."""
    _chromium(f"--window-size=1200,{height}", f"--screenshot={out}", html.resolve().as_uri())
    if not out.is_file() or out.stat().st_size < 10_000:
        raise AssertionError(f"no screenshot of {html}")
    return out
