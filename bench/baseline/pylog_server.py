"""The log server logpipe's --python-logging replaces, reconstructed.

Python's logging cookbook ("Sending and receiving logging events across a
network") gives the receiver most such servers are built from: a
socketserver.ThreadingTCPServer whose handler reads the 4-byte length,
*unpickles the record with pickle.loads* (which runs whatever the pickle
names — any client can run code on the server) and hands it to a local
logger, here with a FileHandler writing one formatted line per record.

Used by benches/collect.rs: `python3 pylog_server.py PORT OUT` serves until
killed, writing every record it receives to OUT. Not part of logpipe.
"""

import logging
import pickle
import socketserver
import struct
import sys

port, out = int(sys.argv[1]), sys.argv[2]

handler = logging.FileHandler(out)
handler.setFormatter(logging.Formatter("%(asctime)s %(name)-15s %(levelname)-8s %(processName)-10s %(message)s"))
logger = logging.getLogger("received")
logger.propagate = False
logger.addHandler(handler)
logger.setLevel(logging.DEBUG)

class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            chunk = self.connection.recv(4)
            if len(chunk) < 4:
                break
            slen = struct.unpack(">L", chunk)[0]
            chunk = self.connection.recv(slen)
            while len(chunk) < slen:
                chunk = chunk + self.connection.recv(slen - len(chunk))
            record = logging.makeLogRecord(pickle.loads(chunk))
            logger.handle(record)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


server = Server(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
