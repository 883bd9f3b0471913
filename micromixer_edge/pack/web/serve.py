#!/usr/bin/env python3
"""Serve this folder with the headers that let the page use threads (cross-origin isolation:
Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy). Python's standard library only.

    python3 serve.py                 # http://127.0.0.1:8000/
    python3 serve.py --bind 0.0.0.0  # the LAN (phones on the same network)

Any static host serves the folder too (one thread without those headers)."""
import argparse
import functools
import http.server
import os


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".gz": "application/octet-stream"}
    isolate = True

    def end_headers(self):
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args):  # quiet: the page is the interface
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port [8000]")
    parser.add_argument("--bind", default="127.0.0.1", help="address [127.0.0.1]; 0.0.0.0 serves the LAN")
    parser.add_argument("--no-isolation", action="store_true", help="leave the headers out (one thread)")
    args = parser.parse_args()
    Handler.isolate = not args.no_isolation
    handler = functools.partial(Handler, directory=os.path.dirname(os.path.abspath(__file__)))
    try:
        server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    except OSError as e:
        parser.exit(1, f"error: cannot serve on {args.bind}:{args.port}: {e.strerror}\n")
    port = server.server_address[1]
    if args.bind in ("0.0.0.0", "::"):  # (an address other machines cannot open as such)
        print(f"serving on port {port} of every address: http://127.0.0.1:{port}/ here, http://<this machine's "
              f"address>:{port}/ from the LAN (one thread there: plain http from another machine is not isolated)",
              flush=True)
    else:
        print(f"serving on http://{args.bind}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
