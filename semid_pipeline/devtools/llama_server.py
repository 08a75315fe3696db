"""llama.cpp's own OpenAI-compatible HTTP server (the C++ ``llama-server``) for one GGUF model, from the
prebuilt ``xllamacpp`` wheel (``bash scripts/setup.sh llm``: nothing is compiled at install time):

    python -m semid_pipeline.devtools.llama_server --model <file.gguf> --port 8080

It serves ``/v1/models`` and ``/v1/chat/completions`` (JSON-schema constrained output included) on
``--host:--port`` until SIGTERM or SIGINT. ``devtools/local_llm.py`` starts and stops it for the tests
and the tag benchmark.
"""

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of the GGUF file")
    parser.add_argument("--model_alias", default="local", help="the model name clients send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--n_ctx", type=int, default=2048, help="context window (tokens)")
    parser.add_argument("--n_threads", type=int, default=1, help="CPU threads for generation and prompt processing")
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.model_alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = args.n_threads
    params.cpuparams_batch.n_threads = args.n_threads

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = xllamacpp.Server(params)  # listens from here on; closes when released
    print(f"serving {args.model} as {args.model_alias!r} on http://{args.host}:{args.port}/v1", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
