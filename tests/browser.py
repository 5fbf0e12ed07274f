"""A small driver for headless Chromium, for the report and explorer tests.

It speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe``: Chromium reads
commands from its file descriptor 3 and writes replies and events to descriptor 4, each a JSON
message ending in a NUL byte. That needs no websocket client, no chromedriver and no package
beyond the standard library.

    with Browser.launch() as browser:
        page = browser.open(path)           # a file:// page, waits for its load event
        page.evaluate("document.title")
        page.errors()                       # console errors, uncaught exceptions, failed loads
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
    "--disable-extensions",
    "--mute-audio",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """The Chromium executable (``$CHROMIUM`` first, then the usual names on PATH), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, proc: subprocess.Popen, to_chrome: int, from_chrome: int, profile: str):
        self._proc, self._out, self._in, self._profile = proc, to_chrome, from_chrome, profile
        self._buf = b""
        self._next_id = 0
        self._events: list[dict] = []

    @classmethod
    def launch(cls, executable: str | None = None, *, timeout: float = 30.0) -> Browser:
        executable = executable or find_chromium()
        if executable is None:
            raise BrowserError("no Chromium found (install the Debian package 'chromium')")
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        ev_r, ev_w = os.pipe()  # Chromium writes on fd 4, we read
        # The pipe ends arrive as stdin/stdout; the shell moves them onto 3 and 4 and then
        # becomes Chromium (portable, and no preexec_fn).
        script = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null'
        proc = subprocess.Popen(
            ["sh", "-c", script, executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=cmd_r,
            stdout=ev_w,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(ev_w)
        browser = cls(proc, cmd_w, ev_r, profile)
        try:
            browser.send("Browser.getVersion", timeout=timeout)
        except BaseException:
            browser.close()
            raise
        return browser

    # -- protocol ----------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed the pipe (exit status {self._proc.poll()})")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(
        self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 20.0
    ) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_event(self, method: str, *, session: str | None = None, timeout: float = 20.0) -> dict:
        """Wait for (and consume) the first event ``method`` of ``session``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method and ev.get("sessionId") == session:
                    return self._events.pop(i)
            self._events.append(self._read_message(deadline))

    def drain(self, *, seconds: float = 0.05) -> None:
        """Collect the events already sent (console messages arrive asynchronously)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self._events.append(self._read_message(deadline))
        except BrowserError:
            pass

    def events(self, session: str | None) -> list[dict]:
        return [ev for ev in self._events if ev.get("sessionId") == session]

    # -- pages -------------------------------------------------------------------------

    def open(self, path: str | Path, *, timeout: float = 20.0) -> Page:
        """Open a local file in a new tab, with console and log collection on, and wait for load."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        page = Page(self, target, session)
        page.goto(path, timeout=timeout)
        return page

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except (BrowserError, OSError):
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab."""

    def __init__(self, browser: Browser, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def goto(self, path: str | Path, *, timeout: float = 20.0) -> None:
        url = Path(path).resolve().as_uri()
        reply = self.browser.send("Page.navigate", {"url": url}, session=self.session, timeout=timeout)
        if reply.get("errorText"):
            raise BrowserError(f"{url}: {reply['errorText']}")
        self.browser.wait_event("Page.loadEventFired", session=self.session, timeout=timeout)

    def evaluate(self, expression: str, *, timeout: float = 20.0) -> Any:
        """Evaluate JavaScript in the page (promises are awaited) and return the value as JSON."""
        reply = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return reply["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads) so far."""
        self.browser.drain()
        out = []
        for ev in self.browser.events(self.session):
            p = ev.get("params", {})
            if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(
                    "console: "
                    + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                )
            elif ev["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        return out

    def screenshot(self, path: str | Path, *, width: int = 1200, height: int = 1600) -> None:
        """Save a PNG of the page (for looking at a page while debugging a test)."""
        import base64

        self.browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})


def launch_or_skip() -> Browser:
    """A launched browser, or a pytest skip naming what is missing."""
    import pytest

    if find_chromium() is None:
        pytest.skip("headless Chromium not found (apt-get install chromium; or set $CHROMIUM)")
    return Browser.launch()
