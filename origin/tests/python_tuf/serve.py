"""Serves a directory over plain HTTP on 127.0.0.1 with Python's own http.server, as a static
file host would serve a TUF repository.

Usage: serve.py DIR LOG. Prints the port it listens on as its first line, appends "<status>
<path>" to LOG for every request, and exits when its standard input closes (when the test that
started it ends, however it ends).
"""

import functools
import http.server
import sys
import threading


def main() -> int:
    directory, log = sys.argv[1], sys.argv[2]

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"{int(code)} {self.path}\n")

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

    handler = functools.partial(Handler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
