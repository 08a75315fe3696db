"""Query-to-product retrieval (CAT-ID2's ESCI task): judged queries, the query-to-SID generative
retriever, and Recall@5/10/20/50/100 of it next to BM25 and dense retrieval (CAT-ID2 Table 2).

Runs on the partitions that have search queries (``esci``, ``demo``); the catalog is the
partition's ``items`` with their ``semantic_ids`` from the same tokenizer assets as any catalog. On
a dataset without queries (Amazon, KuaiRand) ``query_examples`` is an empty table and the two
downstream assets are skipped (no output, so a whole-graph run still succeeds).
"""

from typing import List

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, Output, asset

from semid_pipeline.core.data.esci import LABELS, QUERY_COLUMNS
from semid_pipeline.core.data.registry import DATASETS, load_queries
from semid_pipeline.core.errors import InputError
from semid_pipeline.core.frames import item_column, sid_matrix
from semid_pipeline.core.params import check_limit
from semid_pipeline.core.retrieval.bm25 import BM25Index, BM25Params
from semid_pipeline.core.retrieval.data import build_task, product_texts
from semid_pipeline.core.retrieval.dense import dense_retrieve
from semid_pipeline.core.retrieval.metrics import RETRIEVAL_KS, recall_table
from semid_pipeline.core.retrieval.query_model import GenerativeRetrieverParams, train_generative_retriever
from semid_pipeline.metadata import learning_curve, md_table, order_metric_columns, readable, round_sig
from semid_pipeline.partitions import dataset_partitions
from semid_pipeline.resources import DatasetsResource, TextEncoderResource


class RetrievalLabels(Config):
    train_labels: List[str] = ["E", "S"]
    """Labels whose (query, product) pairs train the generative retriever (CAT-ID2: E and S)."""
    relevant_labels: List[str] = ["E", "S"]
    """Labels counted as relevant in Recall@k."""


class GenerativeRetrieverConfig(RetrievalLabels, GenerativeRetrieverParams):
    """Model size, optimisation and decoding of the query-to-SID model (``GenerativeRetrieverParams``)."""


class RetrievalEvaluationConfig(RetrievalLabels, BM25Params):
    top_k: int = 100
    """Products retrieved per query by every model (Recall@k needs k <= top_k)."""
    ks: List[int] = list(RETRIEVAL_KS)
    """Cut-offs of Recall@k (CAT-ID2 Table 2: 5, 10, 20, 50, 100)."""
    dense: bool = True
    """Also score the dense (sentence-embedding + faiss) baseline."""


def _catalog(semantic_ids: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    return [str(i) for i in item_column(semantic_ids, "item_id")], sid_matrix(semantic_ids)


@asset(partitions_def=dataset_partitions, group_name="retrieval", io_manager_key="table_io")
def query_examples(context: AssetExecutionContext, datasets: DatasetsResource) -> Output:
    """Judged search queries (``query_id, query, item_id, esci_label, split``) after CAT-ID2's
    preprocessing: ESCI's official release, or the demo generator's graded queries."""
    dataset = context.partition_key
    if DATASETS[dataset].queries is None:
        context.log.info(f"{dataset}: no search queries; the retrieval stage is skipped for this dataset")
        return Output(pd.DataFrame({c: pd.Series(dtype=str) for c in QUERY_COLUMNS}), metadata={"n_pairs": 0, "skipped": True})
    df = load_queries(dataset, datasets.shared_dir, datasets.options(dataset))
    missing = [c for c in QUERY_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(dataset, None, f"query table misses columns {missing}")
    bad = ~df["esci_label"].isin(LABELS)
    if bad.any():
        raise InputError(dataset, None, f"esci_label outside {list(LABELS)}: {df['esci_label'][bad].iloc[0]!r}")
    df = df[list(QUERY_COLUMNS)].astype(str).reset_index(drop=True)
    counts = df.groupby(["split", "esci_label"]).size().rename("pairs").reset_index()
    return Output(
        df,
        metadata={
            "n_pairs": len(df),
            "n_train_queries": int(df.loc[df["split"] == "train", "query_id"].nunique()),
            "n_test_queries": int(df.loc[df["split"] == "test", "query_id"].nunique()),
            "pairs_by_split_and_label": md_table(counts),
        },
    )


@asset(partitions_def=dataset_partitions, group_name="retrieval", io_manager_key="model_io", pool="gpu", output_required=False)
def generative_retriever(
    context: AssetExecutionContext, config: GenerativeRetrieverConfig, query_examples: pd.DataFrame, semantic_ids: pd.DataFrame
):
    """Encoder-decoder that reads a query and generates its product's SID (CAT-ID2 section 3.4, eq. 9),
    trained on the training E/S pairs; checkpoint by Recall@10 on held-out training queries."""
    if query_examples.empty:
        context.log.info(f"{context.partition_key}: no search queries; generative_retriever skipped")
        return
    item_ids, sids = _catalog(semantic_ids)
    task = build_task(query_examples, item_ids, config.train_labels, config.relevant_labels, source="query_examples")
    params = GenerativeRetrieverParams(**{k: getattr(config, k) for k in GenerativeRetrieverParams.model_fields})
    result = train_generative_retriever(task, sids, params, progress=context.log.info)
    hist = pd.DataFrame([{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in result.history])
    yield Output(
        result.retriever,
        metadata=readable({
            **task.stats,
            "best_epoch": int(result.best_epoch),
            "epochs_run": len(result.history),
            "train_seconds": float(sum(h.get("seconds", 0.0) for h in result.history)),
            "query_vocabulary": int(result.retriever.query_vocab.size),
            "learning_curve": learning_curve(result.history, "Generative retriever training"),
            "history": md_table(order_metric_columns(hist)),
        }),
    )


@asset(partitions_def=dataset_partitions, group_name="retrieval", io_manager_key="table_io", output_required=False)
def retrieval_evaluation(
    context: AssetExecutionContext,
    config: RetrievalEvaluationConfig,
    query_examples: pd.DataFrame,
    semantic_ids: pd.DataFrame,
    items: pd.DataFrame,
    generative_retriever,
    text_encoder: TextEncoderResource,
):
    """Recall@k on the test queries for the generative retriever (trie-constrained beam search, top
    ``top_k``), BM25 and dense retrieval, over the same catalog: ``model, metric, k, value, n_queries``."""
    item_ids, _ = _catalog(semantic_ids)
    task = build_task(query_examples, item_ids, config.train_labels, config.relevant_labels, source="query_examples")
    if not task.test_texts:
        raise InputError("query_examples", None, "no test query with a relevant product that has a training pair")
    check_limit("top_k", config.top_k, low=max(config.ks), low_reason="the largest k of Recall@k",
                high=len(item_ids), high_reason="the catalog size (items with a SID)")
    # semantic_ids may also cover incoming catalog items that are not in `items` yet: they get an empty text
    docs = product_texts(items.drop_duplicates("item_id").set_index("item_id").reindex(item_ids))
    ranked = {}
    ranked["generative"], _ = generative_retriever.retrieve(task.test_texts, top_k=config.top_k,
                                                            beam_size=max(config.top_k, generative_retriever.params.beam_size),
                                                            progress=context.log.info)
    bm25 = BM25Index(docs, BM25Params(**{k: getattr(config, k) for k in BM25Params.model_fields}))
    ranked["bm25"], _ = bm25.search(task.test_texts, config.top_k)
    if config.dense:
        ranked["dense"], _ = dense_retrieve(text_encoder.get(), task.test_texts, docs, config.top_k, progress=context.log.info)
    rows = [
        {"model": model, "metric": "recall", "k": k, "value": v, "n_queries": len(task.test_texts)}
        for model, r in ranked.items()
        for k, v in recall_table(r, task.test_relevant, config.ks).items()
    ]
    table = pd.DataFrame(rows).astype({"k": "int64", "n_queries": "int64"})
    wide = table.pivot(index="model", columns="k", values="value").add_prefix("recall@").reset_index()
    context.log.info(f"retrieval on {len(task.test_texts)} test queries:\n{wide.to_string(index=False)}")
    yield Output(
        table,
        metadata={
            "n_test_queries": len(task.test_texts),
            "n_catalog_items": len(item_ids),
            "recall_table": md_table(wide),
            **{f"{m}_recall@{k}": round_sig(float(v)) for m, k, v in table[["model", "k", "value"]].itertuples(index=False)},
        },
    )
