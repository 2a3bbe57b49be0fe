"""Drive headless Chromium through the DevTools protocol over a pipe: no port, no extra package.

Chromium's ``--remote-debugging-pipe`` reads protocol commands from file descriptor 3 and writes
replies and events to 4, each a JSON message ended by a NUL byte (the transport Puppeteer's
``pipe: true`` uses). The standard library is enough, so the browser test needs only the Debian
``chromium`` (``.ci/run`` installs it) and nothing from PyPI, and works offline.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from chromium import CHROMIUM

# windowsVirtualKeyCode of the keys the page uses; a printable character is sent as its text.
KEY_CODES = {"Enter": 13, "Escape": 27, "Backspace": 8, "Delete": 46, "ArrowLeft": 37, "ArrowUp": 38,
             "ArrowRight": 39, "ArrowDown": 40}


class Browser:
    """One headless Chromium with one page, driven by DevTools commands (use as a context manager)."""

    def __init__(self, width: int = 1280, height: int = 800, timeout: float = 30.0) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="spml-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
                 "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
        # bash (dash takes only one-digit descriptors) puts the pipe ends at 3 and 4 and execs Chromium:
        # no Python runs between fork and exec (a preexec_fn could deadlock with the test's server thread).
        script = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.process = subprocess.Popen(["bash", "-c", script, "bash", CHROMIUM, *flags, "about:blank"],
                                        pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        page = next(t for t in self.command("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.command("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.command("Page.enable")
        self.command("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self.process.kill()
        self.process.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def command(self, method: str, **params: Any) -> dict:
        """Send one DevTools command (to the page once attached) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no reply to {method}")
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.02)
        raise TimeoutError(f"still false: {expression}")

    def open(self, url: str) -> None:
        """Navigate to ``url`` (returns when the navigation is committed)."""
        self.command("Page.navigate", url=url)

    def reload(self) -> None:
        """Reload the page, as a person pressing F5."""
        self.command("Page.reload", ignoreCache=True)

    def press(self, key: str) -> None:
        """Press and release one key: a printable character or a name of :data:`KEY_CODES`."""
        if len(key) == 1:
            down = {"type": "keyDown", "key": key, "text": key, "windowsVirtualKeyCode": ord(key.upper())}
        else:
            down = {"type": "rawKeyDown", "key": key, "windowsVirtualKeyCode": KEY_CODES[key]}
            if key == "Enter":
                down = {"type": "keyDown", "key": key, "text": "\r", "windowsVirtualKeyCode": 13}
        self.command("Input.dispatchKeyEvent", **down)
        self.command("Input.dispatchKeyEvent", type="keyUp", key=key, windowsVirtualKeyCode=down["windowsVirtualKeyCode"])

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as shown."""
        path.write_bytes(base64.b64decode(self.command("Page.captureScreenshot", format="png")["data"]))
        return path
