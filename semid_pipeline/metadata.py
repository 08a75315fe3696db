"""Helpers that turn core results into rich Dagster metadata: Markdown tables, inline plots, table schemas.

Numbers are written for people: integers as integers, other floats to 4 significant digits
(:func:`fmt_number` in tables, :func:`readable` for scalar entries); metric columns follow
``METRIC_ORDER`` (recall before ndcg, small k before large); every table asset gets
``dagster/row_count`` and ``dagster/column_schema`` (:func:`table_metadata`, called by the table
IO manager) so the UI shows rows and columns natively.
"""

import base64
import io
import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

SIG_DIGITS = 4
METRIC_ORDER = ("recall", "ndcg")


def round_sig(value: float, digits: int = SIG_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (0, inf and nan unchanged)."""
    v = float(value)
    if v == 0.0 or not math.isfinite(v):
        return v
    return round(v, digits - 1 - int(math.floor(math.log10(abs(v)))))


def fmt_number(value: Any, digits: int = SIG_DIGITS) -> str:
    """One table cell for a person: ``64`` (not ``64.0000``), ``0.05275`` (not ``0.05275279502113701``),
    ``1234`` (floats from 1000 up keep their integer part), ``""`` for missing; other values as ``str``."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) >= 10 ** (digits - 1):
            return f"{v:.0f}"
        return f"{round_sig(v, digits):.{digits}g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(fmt_number(v, digits) for v in value) + "]"
    return str(value)


def readable(metadata: Mapping[str, Any], digits: int = SIG_DIGITS) -> Dict[str, Any]:
    """Scalar metadata for the UI: floats rounded to ``digits`` significant digits, numpy scalars as
    python ones; everything else (strings, ``MetadataValue`` objects, ints) unchanged."""
    out: Dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            out[key] = round_sig(float(value), digits)
        else:
            out[key] = value
    return out


def metric_sort_key(name: str) -> tuple:
    """Sort key of a metric column such as ``recall@10``, ``valid_ndcg@5`` or ``test_sasrec_recall@10``:
    recall before ndcg (``METRIC_ORDER``), then k ascending; names without ``@k`` keep their place first."""
    m = re.search(r"([A-Za-z]+)@(\d+)$", str(name))
    if not m:
        return (0, 0, 0, str(name))
    metric, k = m.group(1).lower(), int(m.group(2))
    rank = METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)
    return (1, rank, k, str(name))


def order_metric_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its ``metric@k`` columns in reading order (recall@5, recall@10, ndcg@5, ndcg@10),
    after the other columns in their original order."""
    plain = [c for c in df.columns if metric_sort_key(c)[0] == 0]
    metric = sorted((c for c in df.columns if metric_sort_key(c)[0] == 1), key=metric_sort_key)
    return df[plain + metric]


def md_table(df: pd.DataFrame) -> MetadataValue:
    """A DataFrame as a Markdown table with every cell formatted by :func:`fmt_number`."""
    shown = pd.DataFrame({str(c): [fmt_number(v) for v in df[c].tolist()] for c in df.columns}, columns=[str(c) for c in df.columns])
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    align = ["right" if n else "left" for n in numeric] or None
    return MetadataValue.md(shown.to_markdown(index=False, disable_numparse=True, colalign=align))


def glossary(entries: Mapping[str, str]) -> MetadataValue:
    """What each metadata entry means, as a Markdown list (``name: explanation``)."""
    return MetadataValue.md("\n".join(f"- **{k}**: {v}" for k, v in entries.items()))


def _type_name(arrow_type) -> str:
    """An Arrow type as a reader wants it: ``string``, ``list<int64>`` (not ``large_string``, ``list<element: int64>``)."""
    return re.sub(r"\b(element|item): ", "", str(arrow_type)).replace("large_", "")


def table_metadata(df: pd.DataFrame, parquet_path: Optional[Path] = None) -> Dict[str, Any]:
    """``dagster/row_count`` and ``dagster/column_schema`` of a table, the types read from its Parquet
    file when given (exact, e.g. ``list<float>``), else from the DataFrame's dtypes."""
    if parquet_path is not None:
        import pyarrow.parquet as pq

        schema = pq.read_schema(parquet_path)
        types = {name: _type_name(schema.field(name).type) for name in schema.names}
    else:
        types = {}
    columns = [TableColumn(name=str(c), type=types.get(str(c), str(df[c].dtype))) for c in df.columns]
    return {"dagster/row_count": MetadataValue.int(len(df)), "dagster/column_schema": MetadataValue.table_schema(TableSchema(columns=columns))}


def png_markdown(fig) -> MetadataValue:
    """Embeds a matplotlib figure as an inline PNG that the Dagster UI renders."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_figure(
    history: Sequence[Mapping[str, Any]],
    panels: Mapping[str, Sequence[str]],
    title: str,
    x: str = "epoch",
    hlines: Optional[Mapping[str, float]] = None,
    log_panels: Sequence[str] = (),
    zero_panels: Sequence[str] = (),
):
    """The matplotlib figure of :func:`curves` (one axis per panel, shared x), for tests and reuse."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    shown = {name: keys for name, keys in panels.items() if any(h.get(k) is not None for h in history for k in keys)}
    n = max(len(shown), 1)
    fig, axes = plt.subplots(n, 1, figsize=(6.4, 2.3 * n + 0.4), sharex=True, squeeze=False)
    xs = [h.get(x, i + 1) for i, h in enumerate(history)]
    for ax, (name, keys) in zip(axes[:, 0], shown.items()):
        for key in keys:
            pts = [(xv, h[key]) for xv, h in zip(xs, history) if isinstance(h.get(key), (int, float)) and not isinstance(h.get(key), bool)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 40 else None, markersize=3, label=key)
        if hlines and name in hlines:
            ax.axhline(hlines[name], color="grey", linestyle="--", linewidth=0.8, label=f"max {fmt_number(hlines[name])}")
        if name in log_panels:
            ax.set_yscale("log")
        if name in zero_panels:
            ax.set_ylim(bottom=0)
        ax.set_ylabel(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel(x)
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def curves(history: Sequence[Mapping[str, Any]], panels: Mapping[str, Sequence[str]], title: str, **options: Any) -> MetadataValue:
    """Learning curves with one y axis per panel (``{"loss": ["loss"], "validation": ["valid_recall@10", ...]}``),
    so a loss of 2-3 and a recall of 0.01-0.09 never share a scale. Keys missing from an epoch (no
    validation that epoch) are skipped, not drawn as zero; panels with no values are left out;
    ``hlines`` draws a reference line per panel (e.g. the codebook size); ``log_panels`` get a log
    y axis (loss terms of different sizes), ``zero_panels`` start at 0 (counts, rates).
    Options (``x``, ``hlines``, ``log_panels``, ``zero_panels``) are :func:`curve_figure`'s."""
    return png_markdown(curve_figure(history, panels, title, **options))


def learning_curve(history: Sequence[Mapping[str, Any]], title: str, loss_key: str = "loss") -> MetadataValue:
    """A trainer's per-epoch history (``loss`` plus ``valid_<metric>@k`` on validated epochs) with the
    training loss and the validation metrics on separate axes (a loss of 2-3 and a recall of
    0.01-0.09 on one axis flatten the recall to zero); metrics in reading order."""
    metrics = sorted({k for h in history for k in h if k.startswith("valid_") and "@" in k}, key=metric_sort_key)
    return curves(history, {"training loss": [loss_key], "validation": metrics}, title)


def line_plot(history: Sequence[Mapping[str, float]], keys: Iterable[str], title: str, x: str = "epoch") -> MetadataValue:
    """Keys of one kind (e.g. the terms of one loss) on one axis; mixed kinds belong in :func:`curves`."""
    return curves(history, {"value": list(keys)}, title, x=x)


def bar_plots(series: Dict[str, List[float]], title: str) -> MetadataValue:
    """One small bar chart per entry (e.g. code usage counts per level)."""
    plt = _pyplot()
    n = max(len(series), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items()):
        ax.bar(range(len(values)), sorted(values, reverse=True), width=1.0)
        used = sum(1 for v in values if v > 0)
        ax.set_title(f"{name}: {used} of {len(values)} codes used", fontsize=9)
        ax.set_xlabel("code (sorted by use)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png_markdown(fig)


_LLM_KEYS = ("calls", "cache_hits", "retries", "invalid_answers", "prompt_tokens", "completion_tokens", "tokens", "seconds")


def llm_run_metadata(stats: Mapping[str, float]) -> Dict[str, float]:
    """A model client's per-run counters (``LLMClient.stats_since``) as ``llm_*`` metadata entries;
    all zero when the stage made no client (so every LLM stage reports the same keys)."""
    return {f"llm_{k}": (round_sig(float(stats.get(k, 0.0))) if k == "seconds" else int(stats.get(k, 0))) for k in _LLM_KEYS}
