"""A page opened in headless Chromium (Debian's ``chromium``) through the DevTools protocol over
``--remote-debugging-pipe``: what a person would see, and what the page asked for.

``open_page(path, screenshots)`` loads a local file, collects the console's errors, uncaught
exceptions and every request the page made, evaluates expressions in it, and saves
screenshots. No package beyond the standard library: the protocol is JSON messages separated by
NUL on two pipes (file descriptors 3 and 4 of the browser). As root, the browser runs in a new,
empty network namespace (``unshare --net``): a request that did leave the file would go nowhere,
and is still seen and reported.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-extensions", "--disable-default-apps", "--metrics-recording-only",
         "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
         "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    """The browser did not start, or did not answer."""


def browser_binary() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclasses.dataclass
class PageResult:
    url: str
    errors: list[str]  # console errors, uncaught exceptions, log entries of level error
    requests: list[str]  # every URL the page requested (itself and data: URLs included)
    values: dict[str, Any]  # the evaluated expressions, by name
    screenshots: list[Path]

    def requests_leaving(self) -> list[str]:
        """Requests for anything but the file itself (file:) and the page's inline data (data:)."""
        return [url for url in self.requests if not url.startswith(("file:", "data:"))]


class _Pipe:
    """The DevTools protocol on the browser's pipes: commands out, responses and events in."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = os.fdopen(to_browser, "wb", buffering=0)
        self._in = os.fdopen(from_browser, "rb", buffering=0)
        self._next = 0
        self.events: queue.Queue[dict] = queue.Queue()
        self._responses: dict[int, dict] = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._in.read(65536)
            except (OSError, ValueError):  # closed: the browser is gone, or we are done
                break
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._arrived:
                        self._responses[message["id"]] = message
                        self._arrived.notify_all()
                else:
                    self.events.put(message)
        with self._arrived:
            self._arrived.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next += 1
        number = self._next
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._arrived:
            while number not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise BrowserError(f"no answer to {method}")
                self._arrived.wait(left)
        response = self._responses.pop(number)
        if "error" in response:
            raise BrowserError(f"{method}: {response['error']}")
        return response.get("result", {})

    def close(self) -> None:
        for handle in (self._out, self._in):
            try:
                handle.close()
            except OSError:
                pass


def _describe_console(params: dict) -> str:
    parts = [str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])]
    return f"console.{params.get('type')}: {' '.join(parts)}"


def open_page(path: Path, screenshot_stem: Path | None = None, expressions: dict[str, str] | None = None,
              actions: dict[str, str] | None = None, width: int = 1400, height: int = 1800,
              settle_s: float = 1.0) -> PageResult:
    """Load ``path`` in headless Chromium; evaluate ``expressions`` (name -> JavaScript whose value
    is JSON-serialisable); save ``<stem>-top.png`` (the first screen) and ``<stem>-full.png``; then
    evaluate ``actions`` (which may change the page: clicks, typing), their values with the others."""
    binary = browser_binary()
    if binary is None:
        raise BrowserError("no chromium: `apt-get install chromium` (scripts/setup.sh installs it)")
    url = path.resolve().as_uri()
    profile = Path(tempfile.mkdtemp(prefix="testbed-chromium-"))
    to_read, to_browser = os.pipe()  # fd 3 of the browser: it reads commands
    from_browser, to_write = os.pipe()  # fd 4 of the browser: it writes answers

    def wire_descriptors() -> None:  # in the child, before exec: its fds 3 and 4
        read_end, write_end = os.dup(to_read), os.dup(to_write)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    command = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    if os.geteuid() == 0 and shutil.which("unshare"):
        command = ["unshare", "--net", *command]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=wire_descriptors)
    os.close(to_read)
    os.close(to_write)
    pipe = _Pipe(to_browser, from_browser)
    errors: list[str] = []
    requests: list[str] = []
    values: dict[str, Any] = {}
    shots: list[Path] = []
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": url}, session=session)
        loaded = False
        deadline = time.monotonic() + 60
        settle_until = None
        while time.monotonic() < deadline:
            try:
                event = pipe.events.get(timeout=0.2)
            except queue.Empty:
                if settle_until is not None and time.monotonic() >= settle_until:
                    break
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Page.loadEventFired":
                loaded = True
                settle_until = time.monotonic() + settle_s  # late console messages and requests
            elif method == "Network.requestWillBeSent":
                requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(_describe_console(params))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append(f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}")
        if not loaded:
            raise BrowserError(f"{url} did not load within 60 s")

        def evaluate(expressions: dict[str, str]) -> None:
            for name, expression in expressions.items():
                result = pipe.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=session)
                if "exceptionDetails" in result:
                    errors.append(f"evaluating {name}: {result['exceptionDetails'].get('text')}")
                    continue
                values[name] = result.get("result", {}).get("value")

        evaluate(expressions or {})
        if screenshot_stem is not None:
            screenshot_stem.parent.mkdir(parents=True, exist_ok=True)
            top = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)
            shots.append(screenshot_stem.with_name(screenshot_stem.name + "-top.png"))
            shots[-1].write_bytes(base64.b64decode(top["data"]))
            full = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=session, timeout=60)
            shots.append(screenshot_stem.with_name(screenshot_stem.name + "-full.png"))
            shots[-1].write_bytes(base64.b64decode(full["data"]))
        evaluate(actions or {})
        time.sleep(0.2)
        # what happened while evaluating and capturing
        while not pipe.events.empty():
            event = pipe.events.get()
            if event.get("method") == "Network.requestWillBeSent":
                requests.append(event["params"]["request"]["url"])
            elif event.get("method") in ("Runtime.exceptionThrown",):
                errors.append(f"exception: {event['params'].get('exceptionDetails', {}).get('text')}")
        try:
            pipe.call("Browser.close", timeout=10)
        except BrowserError:
            pass
    finally:
        pipe.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()  # the browser we started, by its PID
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return PageResult(url, errors, requests, values, shots)


# -- checks of a report page -----------------------------------------------------------------------

#: every number the page took from a stored file, with where from and how printed
CELLS = """Array.from(document.querySelectorAll('[data-path]')).map(e => ({
  src: e.dataset.src, path: e.dataset.path, fmt: e.dataset.fmt, text: e.textContent}))"""
IMAGES = """Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
  src: i.src.slice(0, 22)}))"""


def resolve(document: Any, pointer: str) -> Any:
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def printed(value: float, fmt: str) -> str:
    if fmt == "d":
        return str(int(round(value)))
    digits = int(fmt.lstrip("+"))
    return f"{value:+.{digits}f}" if fmt.startswith("+") else f"{value:.{digits}f}"


def check_numbers(cells: list[dict], sources: dict[str, Any]) -> None:
    assert cells, "the page shows no number taken from the stored files"
    wrong = []
    for cell in cells:
        expected = printed(resolve(sources[cell["src"]], cell["path"]), cell["fmt"])
        if cell["text"] != expected:
            wrong.append(f"{cell['src']}{cell['path']}: page {cell['text']!r}, file {expected!r}")
    assert not wrong, "numbers differ from the files:\n" + "\n".join(wrong[:20])


def check_clean(result: PageResult) -> None:
    assert not result.errors, f"console errors: {result.errors}"
    assert result.requests and result.requests[0] == result.url  # the network log saw the page itself
    assert not result.requests_leaving(), f"requests beyond the file: {result.requests_leaving()}"
    assert all(image["complete"] and image["width"] > 0 for image in result.values["images"]), result.values["images"]
