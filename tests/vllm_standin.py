"""A stand-in for vLLM's API server in the managed-server tests: same command line, /health, and a child
process (as vLLM's engine core), in seconds instead of minutes. ``--fail-at-start`` exits with an error."""

from __future__ import annotations

import argparse
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--fail-at-start", action="store_true")
    args, _ = parser.parse_known_args()
    if args.fail_at_start:
        print("ValueError: stand-in refuses to start", flush=True)
        sys.exit(3)
    engine = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    print(f"engine pid {engine.pid}", flush=True)
    HTTPServer((args.host, args.port), Health).serve_forever()


if __name__ == "__main__":
    main()
