"""Memory per idle connection: opens N keep-alive connections to the gateway, each after
one answered request (the state a pooled client leaves), and holds them while the caller
reads the gateway's RSS. Prints READY when they are all open, then waits for stdin."""
import socket
import sys

host, port, n, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
request = f"GET /v1/models HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
conns = []
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    conns.append(s)
print("READY", flush=True)
sys.stdin.read()
