"""A rule-based stand-in for an OpenAI-compatible vision/chat server, for tests and offline demos.

It is NOT a model. No vision-language model can run offline on this project's CPU machines, so the
caption path is exercised over real HTTP against this server instead: it speaks the same protocol as
vLLM / llama.cpp / OpenAI (``GET /v1/models``, ``POST /v1/chat/completions`` with ``image_url``
content parts and ``response_format``), and answers deterministically from what it is sent:

- a message with an image (a ``data:`` URL or a local path/``file://`` URL): a caption built from
  the image's dominant non-white colour and the silhouette's aspect ratio;
- ``response_format`` json_schema ``intent_descriptors`` (DCIM): descriptors made from 1-3 content
  words of the item title, then one deliberately generic descriptor ("great gift idea");
- ``descriptor_quality`` (QARM): label 1 when a content word of the descriptor occurs in the item
  text, else 0;
- ``tag_choice``: the first enum candidate sharing a word with the item description, else the first.

Run it alone with ``python -m semid_pipeline.devtools.standin_server --port 8090``.
"""

import argparse
import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse
from urllib.request import url2pathname

MODEL_NAME = "standin-vlm"
_COLOURS = {
    "red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 60), "purple": (130, 50, 170),
    "orange": (235, 140, 30), "pink": (235, 120, 180), "teal": (30, 150, 150), "brown": (130, 80, 40),
    "black": (20, 20, 20), "grey": (128, 128, 128), "yellow": (230, 220, 40),
}
_STOP = {"the", "and", "for", "with", "a", "an", "of", "in", "to", "oz", "fl", "ml", "pack", "set", "title", "brand",
         "description", "categories", "item", "this", "that", "your", "from"}


def describe_image(data: bytes) -> str:
    """Caption from the dominant non-white colour and the silhouette's shape."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB").resize((64, 64))
        px = list(rgb.getdata())
    fg = [(i, p) for i, p in enumerate(px) if min(p) < 235]
    if not fg:
        return "A plain white image with no visible product."
    n = len(fg)
    mean = tuple(sum(p[k] for _, p in fg) / n for k in range(3))
    colour = min(_COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(_COLOURS[c], mean)))
    xs = [i % 64 for i, _ in fg]
    ys = [i // 64 for i, _ in fg]
    w, h = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
    shape = "tall bottle" if h > 1.4 * w else "wide tube" if w > 1.4 * h else "round container"
    return (
        f"A {colour} {shape} shown on a plain white background. Clean, minimal packaging in {colour} tones; "
        f"suited to an everyday personal-care routine at home."
    )


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in _STOP]


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def _image_bytes(message: dict) -> Optional[bytes]:
    content = message.get("content")
    if not isinstance(content, list):
        return None
    for part in content:
        if part.get("type") == "image_url":
            url = part["image_url"]["url"]
            if url.startswith("data:"):
                return base64.b64decode(url.split(",", 1)[1])
            parsed = urlparse(url)
            path = Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url)
            return path.read_bytes()
    return None


def _descriptors(prompt: str) -> dict:
    title = re.search(r"Title: ([^.;\n]*)", prompt)
    source = title.group(1) if title else prompt.split("Item:", 1)[-1]
    words = list(dict.fromkeys(_words(source)))
    words = words[: 1 + len(words) % 3]  # 1-3 grounded descriptors, varying with the title
    out = [{"descriptor": f"{w} routine", "confidence": round(0.9 - 0.2 * k, 2)} for k, w in enumerate(words)]
    out.append({"descriptor": "great gift idea", "confidence": 0.3})  # generic: QARM labels it 0
    return {"surface_attributes": " ".join(words), "latent_motivations": "daily personal care", "descriptors": out}


def _quality(prompt: str) -> dict:
    item, _, descriptor = prompt.rpartition("Descriptor:")
    item_words = set(_words(item.split("Item:", 1)[-1]))
    return {"label": int(any(w in item_words for w in _words(descriptor) if w != "routine"))}


def _choice(prompt: str, schema: dict) -> dict:
    options = schema["properties"]["tag"]["enum"]
    desc = re.search(r"item description: (.*?), and the previous", prompt, re.S)
    words = set(_words(desc.group(1) if desc else prompt))
    for option in options:
        if words & set(_words(option)):
            return {"tag": option}
    return {"tag": options[0]}


def answer(body: dict) -> tuple[int, dict]:
    """The (status, JSON body) reply to one chat-completions request."""
    messages = body.get("messages") or []
    if not messages:
        return 400, {"error": {"message": "messages is empty"}}
    last = messages[-1]
    image = _image_bytes(last)
    fmt = body.get("response_format") or {}
    if image is not None:
        try:
            content = describe_image(image)
        except Exception as err:  # a broken image is the client's problem: answer like a server would
            return 400, {"error": {"message": f"cannot decode image: {err}"}}
    elif fmt.get("type") == "json_schema":
        name = fmt["json_schema"].get("name")
        prompt = _text_of(next(m for m in messages if m.get("role") == "user"))
        if name == "intent_descriptors":
            content = json.dumps(_descriptors(prompt))
        elif name == "descriptor_quality":
            content = json.dumps(_quality(prompt))
        elif name == "tag_choice":
            content = json.dumps(_choice(prompt, fmt["json_schema"]["schema"]))
        else:
            return 400, {"error": {"message": f"the stand-in server does not know schema {name!r}"}}
    else:
        content = "The stand-in server only captions images and answers known JSON schemas."
    tokens = len(_text_of(last).split())
    return 200, {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", MODEL_NAME),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": tokens, "completion_tokens": len(content.split()),
                  "total_tokens": tokens + len(content.split())},
    }


class StandInServer:
    """The server on ``host:port`` (0 = a free port) in a background thread; a context manager.
    ``requests`` counts chat requests served."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError as err:
                    self._send(400, {"error": {"message": f"bad JSON: {err}"}})
                    return
                with server._lock:
                    server.requests += 1
                self._send(*answer(body))

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "StandInServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "StandInServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    server = StandInServer(args.host, args.port)
    print(f"stand-in server on {server.url} (rule-based, not a model)", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
