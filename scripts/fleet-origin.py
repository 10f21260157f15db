#!/usr/bin/env python3
"""The origin host of scripts/fleet-sim.sh: a Tart-like OCI registry and its storage.

    fleet-origin.py --dir DIR --host IP --registry-port P --storage-port S \
                    --layers L --layer-mib MIB [--cut-first-at BYTES] [--prepare-only]

- Image: a config blob and L layers of MIB MiB of random bytes, written once to DIR
  (reused while the sizes match), their SHA-256 digests in DIR/image.json.
- Registry (http://IP:P): `GET /v2/` -> 401 + `WWW-Authenticate: Bearer realm=...`;
  `GET /token?service=..&scope=..` -> {"token": ...} (a new token each time); the
  manifest (`/v2/fleet/vm/manifests/latest`, OCI image manifest) and blob GETs need a
  valid `Authorization: Bearer` token (else 401); a blob GET -> 307 to the storage with
  presigned-looking parameters that change on every redirect (X-Amz-Date/Signature).
- Storage (http://IP:S/ghcr1/blobs/sha256:<hex>?X-Amz-...): ghcr.io's storage path
  shape; `ETag: "<digest>"`, `If-None-Match` -> 304, `Range: bytes=N-` / `N-M` -> 206,
  bodies sent with sendfile. With --cut-first-at B the first full (200) response of each
  blob is cut after B bytes (the connection closes), so the client must resume.
- `GET /stats` on either port -> JSON counters: body bytes sent by the registry and by
  the storage, responses by status, tokens, cuts, storage 200/206/304 per blob.

Threads, HTTP/1.1 keep-alive. Only the standard library.
"""

import argparse
import hashlib
import http.server
import json
import os
import socketserver
import sys
import threading
import time

CHUNK = 1 << 20
REPO = "fleet/vm"
LOCK = threading.Lock()
STATS = {
    "registry_body_bytes": 0,
    "storage_body_bytes": 0,
    "statuses": {},
    "tokens": 0,
    "cuts": 0,
    "storage_full": 0,
    "storage_ranged": 0,
    "storage_not_modified": 0,
    "auth_leaks": 0,
    # Full-body (200) storage responses per blob digest.
    "full_per_blob": {},
}
TOKENS = set()
CUT_DONE = set()


def count(key, n=1):
    with LOCK:
        STATS[key] += n


def prepare(d, layers, layer_mib):
    """Writes the blobs (unless DIR/image.json already describes these sizes)."""
    os.makedirs(d, exist_ok=True)
    meta_path = os.path.join(d, "image.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["layers"] == layers and meta["layer_mib"] == layer_mib and all(
            os.path.getsize(os.path.join(d, b["file"])) == b["size"] for b in meta["blobs"]
        ):
            return meta
    except (OSError, ValueError, KeyError):
        pass
    blobs = []
    config = json.dumps({"version": 1, "os": "darwin", "arch": "arm64", "disk": layers}).encode()
    with open(os.path.join(d, "blob-config"), "wb") as f:
        f.write(config)
    blobs.append(
        {
            "file": "blob-config",
            "size": len(config),
            "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
            "mediaType": "application/vnd.cirruslabs.tart.config.v1",
        }
    )
    for i in range(layers):
        h = hashlib.sha256()
        name = f"blob-layer{i}"
        with open(os.path.join(d, name), "wb") as f:
            for _ in range(layer_mib):
                b = os.urandom(CHUNK)
                h.update(b)
                f.write(b)
        blobs.append(
            {
                "file": name,
                "size": layer_mib * CHUNK,
                "digest": "sha256:" + h.hexdigest(),
                "mediaType": "application/vnd.cirruslabs.tart.disk.v2",
            }
        )
    meta = {"layers": layers, "layer_mib": layer_mib, "blobs": blobs}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return meta


def manifest(meta):
    desc = lambda b: {"mediaType": b["mediaType"], "digest": b["digest"], "size": b["size"]}
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc(meta["blobs"][0]),
            "layers": [desc(b) for b in meta["blobs"][1:]],
        }
    ).encode()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleet-origin"
    # Set per server: "registry" or "storage".
    role = ""
    meta = None
    storage = ""
    self_url = ""
    cut_first_at = None

    def log_message(self, *a):
        pass

    def answer(self, status, body=b"", headers=()):
        with LOCK:
            STATS["statuses"][str(status)] = STATS["statuses"].get(str(status), 0) + 1
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            count(self.role + "_body_bytes", len(body))

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.role == "registry":
            self.registry(path, query)
        else:
            self.storage_get(path)

    def registry(self, path, query):
        challenge = f'Bearer realm="{self.self_url}/token",service="fleet-registry"'
        if path == "/token":
            if "service=fleet-registry" not in query or "scope=" not in query:
                return self.answer(400)
            with LOCK:
                STATS["tokens"] += 1
                token = f"tok-{STATS['tokens']}-{os.urandom(6).hex()}"
                TOKENS.add(token)
            return self.answer(
                200, json.dumps({"token": token}).encode(), [("Content-Type", "application/json")]
            )
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        with LOCK:
            ok = token in TOKENS
        if not ok:
            return self.answer(401, headers=[("WWW-Authenticate", challenge)])
        if path == "/v2/":
            return self.answer(200, b"{}", [("Content-Type", "application/json")])
        if path == f"/v2/{REPO}/manifests/latest":
            return self.answer(
                200,
                manifest(self.meta),
                [("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            )
        prefix = f"/v2/{REPO}/blobs/"
        if path.startswith(prefix):
            digest = path[len(prefix) :]
            if not any(b["digest"] == digest for b in self.meta["blobs"]):
                return self.answer(404)
            sig = os.urandom(16).hex()
            date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            loc = (
                f"{self.storage}/ghcr1/blobs/{digest}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Credential=fleet&X-Amz-Date={date}&X-Amz-Expires=300"
                f"&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
            )
            return self.answer(307, headers=[("Location", loc), ("Cache-Control", "no-store")])
        return self.answer(404)

    def storage_get(self, path):
        if self.headers.get("Authorization"):
            count("auth_leaks")
        prefix = "/ghcr1/blobs/"
        if not path.startswith(prefix):
            return self.answer(404)
        digest = path[len(prefix) :]
        blob = next((b for b in self.meta["blobs"] if b["digest"] == digest), None)
        if blob is None:
            return self.answer(404)
        etag = f'"{digest}"'
        common = [
            ("ETag", etag),
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("Cache-Control", "public, max-age=0"),
        ]
        inm = self.headers.get("If-None-Match")
        if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            count("storage_not_modified")
            return self.answer(304, headers=[("ETag", etag)])
        size = blob["size"]
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (if_range is None or if_range.strip() == etag):
            spec = rng.strip()
            ok = False
            if spec.startswith("bytes=") and "," not in spec:
                a, _, b = spec[6:].partition("-")
                try:
                    if a:
                        start = int(a)
                        end = min(int(b) + 1, size) if b else size
                        ok = start < size and start < end
                    elif b:
                        start, end = max(size - int(b), 0), size
                        ok = True
                except ValueError:
                    ok = False
            if not ok:
                return self.answer(416, headers=[("Content-Range", f"bytes */{size}")])
            status = 206
        headers = list(common)
        if status == 206:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
            count("storage_ranged")
        else:
            count("storage_full")
            with LOCK:
                STATS["full_per_blob"][digest] = STATS["full_per_blob"].get(digest, 0) + 1
        with LOCK:
            STATS["statuses"][str(status)] = STATS["statuses"].get(str(status), 0) + 1
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = end
        cut = False
        if status == 200 and self.cut_first_at is not None and self.cut_first_at < size:
            with LOCK:
                if digest not in CUT_DONE:
                    CUT_DONE.add(digest)
                    limit, cut = self.cut_first_at, True
        self.wfile.flush()
        with open(os.path.join(self.server.dir, blob["file"]), "rb") as f:
            off = start
            while off < limit:
                try:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), off, min(limit - off, CHUNK))
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                if n == 0:
                    break
                off += n
                count("storage_body_bytes", n)
        if cut:
            count("cuts")
            self.close_connection = True


def serve(role, host, port, d, meta, **attrs):
    h = type(role, (Handler,), dict(role=role, meta=meta, **attrs))
    srv = Server((host, port), h)
    srv.dir = d
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    return srv


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--registry-port", type=int, default=5000)
    p.add_argument("--storage-port", type=int, default=5001)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--layer-mib", type=int, default=32)
    p.add_argument("--cut-first-at", type=int, default=None)
    p.add_argument("--prepare-only", action="store_true")
    a = p.parse_args()
    meta = prepare(a.dir, a.layers, a.layer_mib)
    if a.prepare_only:
        print(json.dumps({"bytes": sum(b["size"] for b in meta["blobs"]), "blobs": len(meta["blobs"])}))
        return
    storage_url = f"http://{a.host}:{a.storage_port}"
    registry_url = f"http://{a.host}:{a.registry_port}"
    serve("storage", a.host, a.storage_port, a.dir, meta, cut_first_at=a.cut_first_at)
    serve("registry", a.host, a.registry_port, a.dir, meta, storage=storage_url, self_url=registry_url)
    print(f"fleet-origin ready registry={registry_url} storage={storage_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
