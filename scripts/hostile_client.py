#!/usr/bin/env python3
"""A hostile client of Tessera's handshake and checkpoint service, for scripts/test-hostile-network.sh.

  hostile_client.py part HOST PORT JSON      prove TESSERA_JOB_TOKEN, send a sealed putPart frame with
                                             the header JSON, print the service's reply frame (type, text)
  hostile_client.py tamper HOST PORT MODE     as a proxy on the path would: start a part of step 9, then
                                             flip a byte of a sealed frame, replay one, or inject one
                                             sealed under another key (MODE flip|replay|inject); print
                                             the service's reply
  hostile_client.py silent HOST PORT N SECS [--trickle]
                                             hold N connections for SECS seconds (connecting until the
                                             port listens), sending nothing or one byte a second; prints
                                             "ready", then how many the other end closed
  hostile_client.py proxy PORT TARGET_PORT MODE AFTER
                                             a tampering proxy on the training mesh: accept one
                                             connection on 127.0.0.1:PORT, relay it to TARGET_PORT,
                                             and once AFTER bytes went from the dialing side, flip
                                             one byte of that direction (MODE flip), insert 64
                                             random bytes (inject) or drop the next 1000 (drop);
                                             prints "tampered at N" when it did, "relayed N" at the end
"""
import hashlib, hmac, json, os, select, socket, struct, sys, time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC, VERSION = b"TSHK", 3

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
    return Seal(token.encode(), hashlib.sha256(transcript).digest())

def hkdf(key, salt, info):
    prk = hmac.new(salt, key, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()

class Seal:
    """The sealed channel after the handshake (FrameSeal.swift): AES-256-GCM, counter nonces."""
    def __init__(self, token, salt):
        self.send_key = AESGCM(hkdf(token, salt, b"tessera-seal-v2 initiator->acceptor"))
        self.receive_key = AESGCM(hkdf(token, salt, b"tessera-seal-v2 acceptor->initiator"))
        self.sent = self.received = 0
    def seal(self, kind, payload):
        box = self.send_key.encrypt(b"\0" * 4 + struct.pack("<Q", self.sent), bytes([kind]) + struct.pack("<I", len(payload)) + payload, None)
        self.sent += 1
        return struct.pack("<I", len(box)) + box
    def receive(self, s):
        box = recv_exactly(s, struct.unpack("<I", recv_exactly(s, 4))[0])
        plain = self.receive_key.decrypt(b"\0" * 4 + struct.pack("<Q", self.received), box, None)
        self.received += 1
        return plain[0], plain[5:]

def part(host, port, header):
    s = socket.create_connection((host, port), timeout=10)
    seal = handshake(s, os.environ["TESSERA_JOB_TOKEN"])
    s.sendall(seal.seal(1, header.encode()))
    kind, payload = seal.receive(s)
    print("reply", kind, payload.decode(errors="replace"))

def tamper(host, port, mode):
    data = os.urandom(2000)
    header = {"step": 9, "rank": 0, "ranks": 1, "files": [{"name": "model-00001-of-00001.safetensors", "size": len(data),
                                                           "sha256": hashlib.sha256(data).hexdigest()}]}
    s = socket.create_connection((host, port), timeout=10)
    seal = handshake(s, os.environ["TESSERA_JOB_TOKEN"])
    s.sendall(seal.seal(1, json.dumps(header).encode()))
    first = seal.seal(2, data[:1000])
    if mode == "flip":
        s.sendall(first[:500] + bytes([first[500] ^ 1]) + first[501:])
    elif mode == "replay":
        s.sendall(first + first)
    else:
        stranger = Seal(os.urandom(32), os.urandom(32))
        stranger.sent = 1
        s.sendall(first + stranger.seal(2, data[1000:]))
    kind, payload = seal.receive(s)
    print("reply", kind, payload.decode(errors="replace"))

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

def proxy(port, target, mode, after):
    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    client, _ = listener.accept()
    deadline = time.time() + 20
    while True:   # the rank behind the proxy may not listen yet
        try:
            server = socket.create_connection(("127.0.0.1", target), timeout=10)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    relayed, done, end = 0, False, time.time() + 120
    while time.time() < end:
        ready, _, _ = select.select([client, server], [], [], 1)
        for s in ready:
            data = s.recv(1 << 16)
            if not data:
                print(f"relayed {relayed}", flush=True)
                return
            if s is client:
                if not done and relayed + len(data) > after:
                    at = after - relayed
                    if mode == "flip":
                        data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]
                    elif mode == "inject":
                        data = data[:at] + os.urandom(64) + data[at:]
                    else:
                        data = data[:at] + data[at + 1000:]
                    done = True
                    print(f"tampered at {after}", flush=True)
                relayed += len(data)
                server.sendall(data)
            else:
                client.sendall(data)

if __name__ == "__main__":
    if sys.argv[1] == "part":
        part(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "proxy":
        proxy(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "tamper":
        tamper(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        silent(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), "--trickle" in sys.argv)
