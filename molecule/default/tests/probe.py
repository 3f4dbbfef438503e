"""One network probe, run inside a lab host with its python3.

usage: python3 - HOST PORT   (the script arrives on stdin)
Prints one word: open (TCP handshake done), refused (the host answered with a
reset: reachable, nothing listening), timeout, unreachable (no route) or
noname (no DNS answer).
"""

import errno
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
try:
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
except socket.gaierror:
    print("noname")
    sys.exit(0)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(3)
try:
    sock.connect(infos[0][4])
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print("unreachable" if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else f"error:{exc}")
finally:
    sock.close()
