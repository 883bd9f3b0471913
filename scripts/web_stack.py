"""How mixer-serve's web stack was chosen: resident memory and time to first byte of a minimal
server-sent-events endpoint under uvicorn, Starlette vs FastAPI (pip install fastapi first).

    python scripts/web_stack.py
"""
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

WORK = tempfile.mkdtemp(prefix="web-stack-")
APP = {
"starlette": '''
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route
async def gen():
    for i in range(5): yield "data: x\\n\\n"
async def ep(request): return StreamingResponse(gen(), media_type="text/event-stream")
app = Starlette(routes=[Route("/s", ep, methods=["POST"])])
''',
"fastapi": '''
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
app = FastAPI()
async def gen():
    for i in range(5): yield "data: x\\n\\n"
@app.post("/s")
async def ep(): return StreamingResponse(gen(), media_type="text/event-stream")
'''}
for name, code in APP.items():
    open(f"{WORK}/app_{name}.py", "w").write(code)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    p = subprocess.Popen([sys.executable, "-m", "uvicorn", f"app_{name}:app", "--port", str(port), "--log-level", "warning"], cwd=WORK)
    for _ in range(100):
        try: httpx.post(f"http://127.0.0.1:{port}/s"); break
        except Exception: time.sleep(0.05)
    ttfb = []
    with httpx.Client() as c:
        for _ in range(200):
            t = time.perf_counter()
            with c.stream("POST", f"http://127.0.0.1:{port}/s") as r:
                next(r.iter_raw()); ttfb.append(time.perf_counter() - t)
    rss = int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
    p.terminate(); p.wait()
    print(f"{name}: RSS {rss:.1f} MB, TTFB median {statistics.median(ttfb)*1e3:.2f} ms")
