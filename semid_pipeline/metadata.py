"""Helpers that turn core results into rich Dagster metadata: Markdown tables and inline plots."""

import base64
import io
from typing import Dict, Iterable, List, Mapping, Sequence

import pandas as pd
from dagster import MetadataValue


def md_table(df: pd.DataFrame, floatfmt: str = ".4f") -> MetadataValue:
    """A DataFrame as a Markdown table (``tabulate`` comes with Dagster)."""
    return MetadataValue.md(df.to_markdown(index=False, floatfmt=floatfmt))


def png_markdown(fig) -> MetadataValue:
    """Embeds a matplotlib figure as an inline PNG that the Dagster UI renders."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def line_plot(history: Sequence[Mapping[str, float]], keys: Iterable[str], title: str, x: str = "epoch") -> MetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = [h.get(x, i) for i, h in enumerate(history)]
    for key in keys:
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, label=key)
    ax.set_xlabel(x)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png_markdown(fig)


def bar_plots(series: Dict[str, List[float]], title: str) -> MetadataValue:
    """One small bar chart per entry (e.g. code usage counts per level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(series), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items()):
        ax.bar(range(len(values)), sorted(values, reverse=True), width=1.0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("code (sorted by use)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return png_markdown(fig)


_LLM_KEYS = ("calls", "cache_hits", "retries", "invalid_answers", "prompt_tokens", "completion_tokens", "tokens", "seconds")


def llm_run_metadata(stats: Mapping[str, float]) -> Dict[str, float]:
    """A model client's per-run counters (``LLMClient.stats_since``) as ``llm_*`` metadata entries;
    all zero when the stage made no client (so every LLM stage reports the same keys)."""
    return {f"llm_{k}": (float(stats.get(k, 0.0)) if k == "seconds" else int(stats.get(k, 0))) for k in _LLM_KEYS}
