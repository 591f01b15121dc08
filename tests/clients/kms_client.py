#!/usr/bin/env python3
"""A KMS v2 client that is not ours: Python grpcio with stubs generated from proto/api.proto.

Usage: kms_client.py SOCKET_PATH
Runs Status, Encrypt of 32 random bytes, Decrypt, and prints one JSON object with the results.
Exit 0 only if healthz is ok, Encrypt's key_id equals Status's and Decrypt returns the bytes.
"""
import json
import os
import sys
import tempfile

from grpc_tools import protoc

import grpc


def generate_stubs(out_dir):
    proto_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                      os.path.join(proto_dir, "api.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    socket_path = sys.argv[1]
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(out)
        import api_pb2  # noqa: E402
        import api_pb2_grpc  # noqa: E402

        # grpcio's own defaults for a unix: target (no grpc.default_authority, so it picks the
        # :authority), like kube-apiserver: wait for ready, 3 s deadline.
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        stub = api_pb2_grpc.KeyManagementServiceStub(channel)
        status = stub.Status(api_pb2.StatusRequest(), timeout=3, wait_for_ready=True)
        seed = os.urandom(32)
        enc = stub.Encrypt(api_pb2.EncryptRequest(plaintext=seed, uid="python-client"), timeout=3)
        dec = stub.Decrypt(api_pb2.DecryptRequest(ciphertext=enc.ciphertext, uid="python-client",
                                                  key_id=enc.key_id, annotations=dict(enc.annotations)), timeout=3)
        unknown_code = None
        try:
            stub.Decrypt(api_pb2.DecryptRequest(ciphertext=enc.ciphertext, uid="python-client",
                                                key_id="obkms1-unknown", annotations=dict(enc.annotations)), timeout=3)
        except grpc.RpcError as e:  # the expected refusal
            unknown_code = e.code().name
        result = {
            "version": status.version,
            "healthz": status.healthz,
            "status_key_id": status.key_id,
            "encrypt_key_id": enc.key_id,
            "annotations": {k: v.decode() for k, v in enc.annotations.items()},
            "ciphertext_len": len(enc.ciphertext),
            "round_trip": dec.plaintext == seed,
            "unknown_key_id_code": unknown_code,
        }
        print(json.dumps(result))
        ok = status.healthz == "ok" and status.key_id == enc.key_id and dec.plaintext == seed
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
