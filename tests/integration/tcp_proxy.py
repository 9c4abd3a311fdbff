"""A TCP proxy for the replay test: listens on 127.0.0.1:LISTEN, forwards
every connection to 127.0.0.1:TARGET both ways, and records what the first
connection's client sent (its first RECORD_BYTES bytes) into RECORD_FILE.

Usage: tcp_proxy.py LISTEN TARGET RECORD_FILE [RECORD_BYTES]
       tcp_proxy.py --replay TARGET RECORD_FILE   send the recording on a new
           connection; print the bytes that came back before the peer closed
"""
import socket
import sys
import threading


def pump(src, dst, record=None, limit=0):
    got = 0
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if record is not None and got < limit:
                record.write(b[:limit - got])
                record.flush()
                got += len(b)
            dst.sendall(b)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve(listen, target, path, limit):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen))
    ls.listen(64)
    print("proxy listening", flush=True)
    first = True
    while True:
        c, _ = ls.accept()
        t = socket.create_connection(("127.0.0.1", target))
        rec = open(path, "wb") if first else None
        first = False
        threading.Thread(target=pump, args=(c, t, rec, limit), daemon=True).start()
        threading.Thread(target=pump, args=(t, c), daemon=True).start()


def replay(target, path):
    data = open(path, "rb").read()
    s = socket.create_connection(("127.0.0.1", target))
    s.settimeout(3)
    back = 0
    try:
        s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                break
            back += len(b)
    except OSError:
        pass
    print("replayed %d bytes, %d came back before the peer closed" % (len(data), back))


if sys.argv[1] == "--replay":
    replay(int(sys.argv[2]), sys.argv[3])
else:
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
          int(sys.argv[4]) if len(sys.argv) > 4 else 1 << 20)
