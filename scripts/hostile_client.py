#!/usr/bin/env python3
"""A hostile client of Tessera's handshake and checkpoint service, for scripts/test-hostile-network.sh.

  hostile_client.py part HOST PORT JSON      prove TESSERA_JOB_TOKEN, send a putPart frame with the
                                             header JSON, print the service's reply frame (type, text)
  hostile_client.py silent HOST PORT N SECS [--trickle]
                                             hold N connections for SECS seconds (connecting until the
                                             port listens), sending nothing or one byte a second; prints
                                             "ready", then how many the other end closed
"""
import hashlib, hmac, os, socket, struct, sys, time, zlib

MAGIC, VERSION = b"TSHK", 2

def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data

def handshake(s, token, identity=b"hostile client"):
    mine = os.urandom(32)
    s.sendall(MAGIC + bytes([VERSION]) + mine + struct.pack("<H", len(identity)) + identity)
    head = recv_exactly(s, 4 + 1 + 32 + 2)
    theirs = head[5:37]
    their_identity = recv_exactly(s, struct.unpack("<H", head[37:39])[0])
    def prefixed(b): return struct.pack("<H", len(b)) + b
    transcript = b"|tessera-handshake-v2|" + mine + theirs + prefixed(identity) + prefixed(their_identity)
    s.sendall(hmac.new(token.encode(), b"initiator" + transcript, hashlib.sha256).digest())
    verdict = recv_exactly(s, 33)
    assert verdict[0] == 1, "the service refused our proof"
    assert hmac.compare_digest(verdict[1:], hmac.new(token.encode(), b"acceptor" + transcript, hashlib.sha256).digest())

def frame(kind, payload):
    head = bytes([kind]) + struct.pack("<I", len(payload)) + payload
    return head + struct.pack("<I", zlib.crc32(head) & 0xFFFFFFFF)

def part(host, port, header):
    s = socket.create_connection((host, port), timeout=10)
    handshake(s, os.environ["TESSERA_JOB_TOKEN"])
    s.sendall(frame(1, header.encode()))
    head = recv_exactly(s, 5)
    payload = recv_exactly(s, struct.unpack("<I", head[1:5])[0])
    print("reply", head[0], payload.decode(errors="replace"))

def silent(host, port, n, seconds, trickle):
    conns, deadline = [], time.time() + 20
    while len(conns) < n:
        try:
            conns.append(socket.create_connection((host, port), timeout=1))
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.001)
    print("ready", flush=True)
    end = time.time() + seconds
    closed = set()
    while time.time() < end:
        for i, c in enumerate(conns):
            if i in closed:
                continue
            try:
                if trickle:
                    c.send(b"T")
                c.setblocking(False)
                if c.recv(1) == b"":
                    closed.add(i)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(i)
            finally:
                c.setblocking(True)
        time.sleep(1)
    print(f"closed by the other end: {len(closed)} of {n}", flush=True)

if __name__ == "__main__":
    if sys.argv[1] == "part":
        part(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        silent(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), "--trickle" in sys.argv)
