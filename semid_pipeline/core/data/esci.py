"""Amazon ESCI (Shopping Queries Dataset) loader, with CAT-ID2's preprocessing (section 4.1).

The official release (https://github.com/amazon-science/esci-data) is two Parquet files:

* ``shopping_queries_dataset_examples.parquet``: ``example_id, query, query_id, product_id,
  product_locale, esci_label (E/S/C/I), small_version, large_version, split (train/test)``;
* ``shopping_queries_dataset_products.parquet``: ``product_id, product_title,
  product_description, product_bullet_point, product_brand, product_color, product_locale``.

Product category paths are not in the release; ESCI-S (a separate crawl) supplies them. A user who
has them passes ``categories_path``: a Parquet/CSV/TSV/JSON-lines table with a product id column
(``product_id`` or ``asin``) and a path column (``category``, ``categories`` or ``category_path``;
a list of names root first, or one string joined with ``" > "``, ``"|"`` or ``","``).

CAT-ID2 preprocessing (section 4.1), applied by :func:`prepare_examples`:

1. one locale (``us``, ``es`` or ``jp``) and, by default, the ``small_version`` subset (the
   reduced task-1 set, whose query counts match the paper's Table 1);
2. with categories: paths cut to ``max_category_depth`` (3) and products with a shorter path
   dropped (with every example that points at them);
3. only E and S pairs are used for training (``train_labels``);
4. every test product must also appear among the training pairs: test E/S pairs whose product has
   no training pair are dropped, and test queries left with no relevant product disappear.

The loader returns two things: :func:`load_esci` gives the :class:`RawDataset` (items = products
with a title, so they get SIDs through the same embedding/tokenizer assets as any catalog;
interactions = each training query's E/S products in example order, so the generic pipeline can
run: a query plays the role of a user), and :func:`load_esci_queries` gives the judged examples
table the retrieval stage uses (:data:`QUERY_COLUMNS`).

Choices where the paper is vague: the product's "document" text is title, brand, colour,
description and bullet points (HTML tags removed); the C and I labels of test queries are kept in
the table (graded relevance) but only E and S count as relevant in Recall@k.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from semid_pipeline.core.data.schema import ITEM_COLUMNS, RawDataset
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.io_utils import read_any_table
from semid_pipeline.core.params import StrictParams

_log = logging.getLogger(__name__)

EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
LOCALES = ("us", "es", "jp")
LABELS = ("E", "S", "C", "I")
EXAMPLE_COLUMNS = ("query", "query_id", "product_id", "product_locale", "esci_label", "split")
PRODUCT_COLUMNS = ("product_id", "product_title")

#: The judged query table every query source produces (ESCI after :func:`prepare_examples`, the demo).
QUERY_COLUMNS = ("query_id", "query", "item_id", "esci_label", "split")


class EsciParams(StrictParams):
    """Where the ESCI files are and how CAT-ID2 preprocesses them."""

    root: str = Field(description="Folder holding the two official Parquet files.")
    locale: Literal["us", "es", "jp"] = Field("us", description="Which locale's queries and products to load.")
    version: Literal["small", "large"] = Field(
        "small", description="The small_version (task 1, the CAT-ID2 setting) or large_version subset."
    )
    examples_file: str = Field(EXAMPLES_FILE, description="Examples file name inside root (or an absolute path).")
    products_file: str = Field(PRODUCTS_FILE, description="Products file name inside root (or an absolute path).")
    categories_path: Optional[str] = Field(
        None, description="Optional ESCI-S style table of product category paths (product_id/asin + category)."
    )
    max_category_depth: int = Field(3, ge=1, description="Category paths are cut to this depth (CAT-ID2: 3).")
    drop_short_paths: bool = Field(
        True, description="With categories: drop products whose path is shorter than max_category_depth (CAT-ID2)."
    )
    train_labels: list[str] = Field(["E", "S"], description="Labels whose (query, product) pairs train the model.")
    relevant_labels: list[str] = Field(["E", "S"], description="Labels that count as relevant for Recall@k.")
    missing_products: Literal["error", "drop"] = Field(
        "error", description="An example whose product is absent from the products file: 'error' or 'drop' it."
    )


def _resolve(root: str, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else Path(root) / name


def _clean_html(text: object) -> Optional[str]:
    if not isinstance(text, str):
        return None
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"\s+", " ", text).strip()
    return text or None


def read_examples(path: Path, locale: str, version: str = "small") -> pd.DataFrame:
    """The official examples file, one locale and version; columns as in the release (extra ones kept).

    Raises ``InputError`` naming the file for a missing file, missing columns (``split`` included),
    labels outside E/S/C/I, or a locale with no rows.
    """
    if not path.exists():
        raise InputError(path, None, "ESCI examples file not found")
    df = read_any_table(path)
    missing = [c for c in EXAMPLE_COLUMNS if c not in df.columns]
    if missing:
        hint = " (the official file has a train/test 'split' column)" if "split" in missing else ""
        raise InputError(path, None, f"missing columns {missing}{hint}; have {list(df.columns)}")
    flag = f"{version}_version"
    if flag in df.columns:
        df = df[df[flag].astype(bool)]
    locales = sorted(df["product_locale"].dropna().astype(str).unique())
    df = df[df["product_locale"] == locale]
    if df.empty:
        raise InputError(path, None, f"no {version}-version examples for locale {locale!r}; the file has locales {locales}")
    bad = ~df["esci_label"].isin(LABELS)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(path, None, f"esci_label must be one of {list(LABELS)}; found {df['esci_label'].iloc[row]!r} ({int(bad.sum())} rows)")
    splits = set(df["split"].astype(str).unique())
    if not splits <= {"train", "test"}:
        raise InputError(path, None, f"split must be 'train' or 'test', found {sorted(splits - {'train', 'test'})}")
    for col in ("query", "product_id"):
        if df[col].isna().any():
            raise InputError(path, None, f"{col} has {int(df[col].isna().sum())} missing values")
    return df.reset_index(drop=True)


def read_products(path: Path, locale: str) -> pd.DataFrame:
    """The official products file for one locale: ``item_id, title, brand, description`` (description =
    colour, description and bullet points without HTML)."""
    if not path.exists():
        raise InputError(path, None, "ESCI products file not found")
    df = read_any_table(path)
    missing = [c for c in PRODUCT_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, None, f"missing columns {missing}; have {list(df.columns)}")
    if "product_locale" in df.columns:
        df = df[df["product_locale"] == locale]
    df = df.drop_duplicates("product_id").reset_index(drop=True)

    def col(name: str) -> pd.Series:
        return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)

    parts = [col("product_color").map(lambda c: f"Colour: {c}" if isinstance(c, str) and c.strip() else None)]
    parts += [col("product_description").map(_clean_html), col("product_bullet_point").map(_clean_html)]
    description = [" ".join(p for p in row if isinstance(p, str) and p) or None for row in zip(*parts)]
    title = col("product_title").map(lambda t: _clean_html(t) or "")
    brand = col("product_brand").map(lambda b: b.strip() if isinstance(b, str) and b.strip() else None)
    return pd.DataFrame(
        {"item_id": df["product_id"].astype(str).to_numpy(), "title": title.to_numpy(), "brand": brand.to_numpy(dtype=object),
         "description": pd.Series(description, dtype=object).to_numpy()}
    )


def _as_path(value: object) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value if isinstance(v, str) and v.strip()]
    if isinstance(value, str) and value.strip():
        for sep in (" > ", ">", "|", ","):
            if sep in value:
                return [v.strip() for v in value.split(sep) if v.strip()]
        return [value.strip()]
    return []


def read_categories(path: Path) -> dict[str, list[str]]:
    """ESCI-S style category paths: ``{product_id: [level-1, level-2, ...]}``."""
    df = read_any_table(path)
    id_col = next((c for c in ("product_id", "asin") if c in df.columns), None)
    path_col = next((c for c in ("category", "categories", "category_path") if c in df.columns), None)
    if id_col is None or path_col is None:
        raise InputError(path, None, f"needs a product id column (product_id or asin) and a category column "
                                     f"(category, categories or category_path); have {list(df.columns)}")
    return {str(k): _as_path(v) for k, v in zip(df[id_col], df[path_col])}


def prepare_examples(examples: pd.DataFrame, products: pd.DataFrame, params: EsciParams,
                     categories: Optional[dict[str, list[str]]] = None, source: str = "ESCI") -> tuple[pd.DataFrame, pd.DataFrame]:
    """CAT-ID2 preprocessing: returns ``(queries, items)``.

    ``queries`` has :data:`QUERY_COLUMNS` (``query_id`` as a string; training rows only with a
    ``train_labels`` label, test rows of every label but only for queries with a relevant product
    that also has a training pair). ``items`` has the RawDataset item columns for every product left.
    """
    known = set(products["item_id"])
    absent = ~examples["product_id"].astype(str).isin(known)
    if absent.any():
        example = examples["product_id"][absent].iloc[0]
        if params.missing_products == "error":
            raise InputError(source, None, f"{int(absent.sum())} examples refer to products missing from the products file, "
                                           f"e.g. {example!r} (set missing_products='drop' to skip them)")
        _log.warning("%s: dropping %d examples whose product is missing, e.g. %r", source, int(absent.sum()), example,
                     extra={"semid_count": {"examples_without_product": int(absent.sum())}})
        examples = examples[~absent]
    items = products.copy()
    if categories is not None:
        paths = [categories.get(pid, [])[: params.max_category_depth] for pid in items["item_id"]]
        items["categories"] = paths
        if params.drop_short_paths:
            items = items[[len(p) >= params.max_category_depth for p in paths]]
    else:
        items["categories"] = [[] for _ in range(len(items))]
    examples = examples[examples["product_id"].astype(str).isin(set(items["item_id"]))]

    q = pd.DataFrame(
        {
            "query_id": examples["query_id"].astype(str).to_numpy(),
            "query": examples["query"].astype(str).to_numpy(),
            "item_id": examples["product_id"].astype(str).to_numpy(),
            "esci_label": examples["esci_label"].astype(str).to_numpy(),
            "split": examples["split"].astype(str).to_numpy(),
        }
    )
    queries = cat_id2_filter(q, params.train_labels, params.relevant_labels)
    used = set(queries["item_id"])
    items = items[items["item_id"].isin(used)].sort_values("item_id").reset_index(drop=True)
    items["image"] = None
    return queries, items[list(ITEM_COLUMNS)]


def cat_id2_filter(queries: pd.DataFrame, train_labels: list[str], relevant_labels: list[str]) -> pd.DataFrame:
    """CAT-ID2 section 4.1 on a judged query table (:data:`QUERY_COLUMNS`): training rows keep only
    ``train_labels``; a test row with a relevant label survives only when its product has a training
    pair; test queries left without a relevant product are dropped (their C/I rows too)."""
    train = queries[(queries["split"] == "train") & queries["esci_label"].isin(train_labels)]
    test = queries[queries["split"] == "test"]
    trained = set(train["item_id"])
    test = test[~test["esci_label"].isin(relevant_labels) | test["item_id"].isin(trained)]
    has_relevant = test.loc[test["esci_label"].isin(relevant_labels), "query_id"].unique()
    test = test[test["query_id"].isin(has_relevant)]
    return pd.concat([train, test], ignore_index=True)


def _load(params: EsciParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    ex_path = _resolve(params.root, params.examples_file)
    pr_path = _resolve(params.root, params.products_file)
    examples = read_examples(ex_path, params.locale, params.version)
    products = read_products(pr_path, params.locale)
    categories = read_categories(Path(params.categories_path)) if params.categories_path else None
    queries, items = prepare_examples(examples, products, params, categories, source=str(ex_path))
    if not (queries["split"] == "train").any():
        raise InputError(ex_path, None, f"no training {params.train_labels} pairs left for locale {params.locale!r} after preprocessing")
    return queries, items


def load_esci_queries(params: EsciParams) -> pd.DataFrame:
    """The judged query table (:data:`QUERY_COLUMNS`) after CAT-ID2 preprocessing."""
    return _load(params)[0]


def queries_to_interactions(queries: pd.DataFrame, train_labels: list[str]) -> pd.DataFrame:
    """Training (query, product) pairs as RawDataset interactions: user = ``"q<query_id>"``, timestamp =
    the pair's position in its query, rating NaN."""
    train = queries[(queries["split"] == "train") & queries["esci_label"].isin(train_labels)]
    user = "q" + train["query_id"].astype(str)
    return pd.DataFrame(
        {
            "user_id": user.to_numpy(),
            "item_id": train["item_id"].to_numpy(),
            "timestamp": train.groupby(user.to_numpy()).cumcount().to_numpy(dtype=np.int64),
            "rating": np.full(len(train), np.nan),
        }
    )


def load_esci(params: EsciParams) -> RawDataset:
    """Products (items) and training query-product pairs (interactions) of one locale."""
    queries, items = _load(params)
    return RawDataset(items, queries_to_interactions(queries, params.train_labels))
