"""A fake Vertex AI prediction endpoint on 127.0.0.1 for the real google-cloud-aiplatform
client (REST transport). It records every call and answers as told: a real upscaled image,
quota errors, server errors, slowness, malformed or empty answers."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image


def write_service_account(path: Path, project: str = "test-project") -> dict:
    """A service-account key file with a freshly generated RSA key (nothing Google knows)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": project, "private_key_id": "0" * 40,
            "private_key": pem, "client_email": f"upscaler@{project}.iam.gserviceaccount.com",
            "client_id": "1234567890", "token_uri": "https://oauth2.googleapis.com/token"}
    path.write_text(json.dumps(info))
    return info


ERRORS = {"429": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for base_model imagen"),
          "500": (500, "INTERNAL", "Internal error encountered."),
          "503": (503, "UNAVAILABLE", "The service is currently unavailable."),
          "403": (403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied")}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (its timeout) closed the connection under a slow answer:
        # expected here, and a traceback on stderr would land in another test's output.
        pass


class FakeVertex:
    def __init__(self, slow_seconds: float = 4.0):
        self.calls: list[dict] = []
        self.modes: deque[str] = deque()
        self.default_mode = "ok"
        self.slow_seconds = slow_seconds
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                call = {"path": self.path.split("?")[0],
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body or b"{}")}
                fake.calls.append(call)
                mode = fake.modes.popleft() if fake.modes else fake.default_mode
                fake.answer(self, mode, call["body"])

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self, *modes: str, default: str = "ok") -> None:
        self.calls.clear()
        self.modes = deque(modes)
        self.default_mode = default

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def answer(self, handler: BaseHTTPRequestHandler, mode: str, body: dict) -> None:
        if mode in ERRORS:
            code, status, message = ERRORS[mode]
            self._json(handler, code, {"error": {"code": code, "status": status,
                                                 "message": message}})
            return
        if mode == "slow":  # past the client's call timeout: retried, then a deadline
            time.sleep(self.slow_seconds)
        if mode == "delay":  # slower than a job's wait, within the call timeout
            time.sleep(0.6)
        if mode == "malformed":
            data = b"<html>502 Bad Gateway</html>"
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if mode == "empty":
            self._json(handler, 200, {"predictions": []})
            return
        if mode == "filtered":
            self._json(handler, 200, {"predictions": [
                {"raiFilteredReason": "The image was filtered by the safety filter."}]})
            return
        image = Image.open(io.BytesIO(base64.b64decode(
            body["instances"][0]["image"]["bytesBase64Encoded"])))
        factor = int(body["parameters"]["upscaleConfig"]["upscaleFactor"].lstrip("x"))
        out = image.convert("RGB").resize((image.width * factor, image.height * factor),
                                          Image.LANCZOS)
        buf = io.BytesIO()
        out.save(buf, "PNG")
        self._json(handler, 200, {"predictions": [
            {"bytesBase64Encoded": base64.b64encode(buf.getvalue()).decode(),
             "mimeType": "image/png"}]})
