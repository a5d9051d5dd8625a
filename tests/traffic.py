"""Traffic helpers shared by tests/integration and tests/libvirt: a listener that stands in for a
service in a guest, and a one-shot client. Both run as `python3 -c SCRIPT` inside a namespace."""
import textwrap

# argv: proto addr port tag. Prints "ready" once bound; answers "TAG PORT from PEER" (TCP: on
# connect, UDP: to every datagram).
LISTENER = textwrap.dedent("""
    import socket, sys
    proto, addr, port, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if proto == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port)); s.listen(64); print("ready", flush=True)
        while True:
            c, peer = s.accept()
            c.sendall(f"{tag} {port} from {peer[0]}\\n".encode()); c.close()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((addr, port)); print("ready", flush=True)
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(f"{tag} {port} from {peer[0]}\\n".encode(), peer)
""")

# argv: proto addr port. Prints the answer line, or "ERROR <reason>" and exits 1.
CLIENT = textwrap.dedent("""
    import socket, sys
    proto, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.create_connection((addr, port), timeout=2)
            s.settimeout(2); print(s.recv(200).decode().strip())
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.5)
            for _ in range(2):
                s.sendto(b"ping", (addr, port))
                try:
                    print(s.recvfrom(200)[0].decode().strip()); break
                except socket.timeout:
                    continue
            else:
                print("ERROR timeout"); sys.exit(1)
    except Exception as e:
        print("ERROR", type(e).__name__, e); sys.exit(1)
""")

# A TCP echo service on port 7 (all addresses): prints "ready" once bound.
ECHO = textwrap.dedent("""
    import socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7)); s.listen(8); print("ready", flush=True)
    def serve(c):
        while True:
            d = c.recv(100)
            if not d: return
            c.sendall(d)
    while True:
        c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
""")

# One connection kept open from a given source (TCP, or UDP from one socket): "open" once
# connected, then per line read from stdin, "ok" when the line's answer comes back within a
# second, "dropped" when it does not.
HOLD = textwrap.dedent("""
    import socket, sys
    proto, addr, port, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if proto == "tcp":
        s = socket.create_connection((addr, port), timeout=2, source_address=(src, 0))
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((src, 0)); s.connect((addr, port))
    s.settimeout(1)
    print("open", flush=True)
    for line in sys.stdin:
        s.send(line.encode())
        try:
            print("ok" if s.recv(200) else "closed", flush=True)
        except (socket.timeout, ConnectionRefusedError):
            print("dropped", flush=True)
""")
