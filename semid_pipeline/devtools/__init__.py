"""Test and benchmark rigs (not used by the pipeline): a rule-based OpenAI-protocol stand-in server
for the caption tests, the llama.cpp server wrapper for local-LLM runs, and the ``transformers``
``generate`` adapter the beam-search parity test and benchmark compare against. They may import the
core; the core never imports them."""
