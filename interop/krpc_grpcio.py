"""Interop with a gRPC stack nobody here wrote: Python grpcio (the C core) against krpc, both ways.

  client MODE ADDR CA   grpcio client -> krpc-server: every method, streaming, the size limit.
  server                grpcio Bench server on 127.0.0.1:0 (prints "port N"), for krpc's
                        clients (the `krpc` CLI, krpc-loadgen) to call.

Stubs are generated from proto/krpc.proto at run time (grpc_tools.protoc), so they always match.
Run by interop/run, which scripts/test calls.
"""

import os
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "proto")


def load_stubs():
    out = tempfile.mkdtemp(prefix="krpc-stubs-")
    rc = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(PROTO_DIR, "krpc.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    import krpc_pb2  # noqa: E402
    import krpc_pb2_grpc  # noqa: E402
    return krpc_pb2, krpc_pb2_grpc


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def client(mode, addr, ca):
    pb, rpc = load_stubs()
    if mode == "off":
        channel = grpc.insecure_channel(addr)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
        channel = grpc.secure_channel(addr, creds)
    stub = rpc.BenchStub(channel)

    payload = bytes(range(256)) * 4
    reply = stub.Echo(pb.EchoRequest(key=b"k", payload=payload), timeout=10)
    check(reply.payload == payload, f"{mode}: Echo returns the 1 KiB payload byte for byte")

    first = stub.Put(pb.PutRequest(key=b"interop", value=b"v1"), timeout=10)
    second = stub.Put(pb.PutRequest(key=b"interop", value=b"v2"), timeout=10)
    check(not first.replaced and second.replaced, f"{mode}: Put reports replacement")
    got = stub.Get(pb.GetRequest(key=b"interop"), timeout=10)
    check(got.found and got.value == b"v2", f"{mode}: Get returns the last Put")

    msgs = [pb.EchoRequest(payload=bytes([i]) * 100) for i in range(20)]
    replies = list(stub.EchoStream(iter(msgs), timeout=10))
    check([r.payload for r in replies] == [m.payload for m in msgs],
          f"{mode}: EchoStream echoes 20 messages in order")

    info = stub.Info(pb.InfoRequest(), timeout=10)
    want = {"off": pb.TLS_MODE_OFF, "rustls": pb.TLS_MODE_RUSTLS, "ktls": pb.TLS_MODE_KTLS}[mode]
    check(info.tls_mode == want, f"{mode}: Info says tls_mode {mode} (strategy {info.strategy})")

    # The server runs with --max-message-bytes 4096: grpcio must see RESOURCE_EXHAUSTED.
    try:
        stub.Echo(pb.EchoRequest(payload=b"x" * 10000), timeout=10)
        check(False, f"{mode}: an oversized message is refused")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED,
              f"{mode}: an oversized message is RESOURCE_EXHAUSTED ({e.code()})")
    reply = stub.Echo(pb.EchoRequest(payload=b"after"), timeout=10)
    check(reply.payload == b"after", f"{mode}: the channel goes on serving")

    try:
        channel.unary_unary("/krpc.v1.Bench/Nope")(b"", timeout=10)
        check(False, f"{mode}: an unknown method is refused")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNIMPLEMENTED,
              f"{mode}: an unknown method is UNIMPLEMENTED ({e.code()})")


def server():
    pb, rpc = load_stubs()

    class Bench(rpc.BenchServicer):
        def __init__(self):
            self.store = {}
            self.lock = threading.Lock()

        def Echo(self, request, context):
            return pb.EchoResponse(payload=request.payload)

        def Put(self, request, context):
            with self.lock:
                replaced = request.key in self.store
                self.store[request.key] = request.value
            return pb.PutResponse(replaced=replaced)

        def Get(self, request, context):
            with self.lock:
                value = self.store.get(request.key)
            return pb.GetResponse(found=value is not None, value=value or b"")

        def EchoStream(self, request_iterator, context):
            for m in request_iterator:
                yield pb.EchoResponse(payload=m.payload)

        def Info(self, request, context):
            return pb.InfoResponse(version="grpcio " + grpc.__version__, runtime="python",
                                   tls_mode=pb.TLS_MODE_OFF, strategy="grpcio", handoff="none")

    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rpc.add_BenchServicer_to_server(Bench(), s)
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(f"port {port}", flush=True)
    s.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client(*sys.argv[2:5])
    elif sys.argv[1:2] == ["server"]:
        server()
    else:
        sys.exit(__doc__)
