"""Headless Chromium (Debian's package) driven over the DevTools protocol: load a page, run script
in it, wait for a condition, take a screenshot. Small on purpose: the tests need no more."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time

import pytest


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:  # Debian's package, installed by the project's own script
        subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "..", "scripts", "browser-setup.sh")],
                       check=True, capture_output=True, timeout=600)
        path = shutil.which("chromium")
    return path


class Browser:
    def __init__(self, profile_dir):
        websocket = pytest.importorskip("websocket")  # websocket-client, in the test extra
        self.proc = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile_dir}", "--window-size=900,700", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                break
        else:
            pytest.fail("chromium did not start its DevTools endpoint")
        port = int(re.search(r":(\d+)/", match.group(1)).group(1))
        import urllib.request
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self._id = 0
        self.events: list[dict] = []  # DevTools events seen while waiting for answers (Network.enable's)
        self._watching = False

    def watch_network(self) -> None:
        """Record the requests of the page and of its workers (a worker's own fetches are its
        target's: each is attached as it starts, paused until its Network domain is on)."""
        self._watching = True
        self.call("Network.enable")
        self.call("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=True, flatten=True)

    def _send(self, method: str, session: str | None = None, **params) -> int:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params,
                                 **({"sessionId": session} if session else {})}))
        return self._id

    def call(self, method: str, **params):
        wanted = self._send(method, **params)
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if self._watching and msg["method"] == "Target.attachedToTarget":
                    session = msg["params"]["sessionId"]
                    self._send("Network.enable", session)
                    self._send("Runtime.runIfWaitingForDebugger", session)
            elif msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href.startsWith('http')")

    def wait_for(self, expression: str, seconds: float = 30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def screenshot(self, path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(10)
