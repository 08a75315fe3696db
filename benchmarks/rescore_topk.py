"""Re-score the exported top-K lists by hand, in SQL, and compare with the evaluation asset.

    python benchmarks/rescore_topk.py --data-dir benchmarks/results/data/amazon-beauty-cpu --dataset amazon-beauty

An independent check of ``core/metrics.py``: it shares no code with it. DuckDB reads the exported
recommendation tables (``*_recommendations`` Parquet, one row per user and rank) and
``user_sequences`` straight from disk, joins each user's held-out item, and computes

* Recall@K = (users whose held-out item is among their first K) / (evaluation users), and
* NDCG@K = sum over hits of 1 / log2(rank + 2) / (evaluation users) (one relevant item, so IDCG = 1),

users without a list counting as misses; the evaluation users are every user, or the seeded sample
``user_sequences.in_eval`` marks. It also checks that every list holds K distinct catalog items. The result, with the largest absolute difference from the ``evaluation`` table, goes to
``benchmarks/results/rescore-<dataset>.json``; the script exits 1 when the two disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]

HAND_SCORE_SQL = """
with targets as (
    select user_idx, 'valid' as split, valid_item as target from read_parquet('{seq}') where {scored}
    union all
    select user_idx, 'test' as split, test_item as target from read_parquet('{seq}') where {scored}
),
n as (select count(*)::double as n_users from read_parquet('{seq}') where {scored}),
recs as (
    select model, split, user_idx, rank, item_idx
    from read_parquet({recs}, union_by_name = true)
),
hits as (
    select r.model, r.split, r.rank
    from recs r join targets t on r.user_idx = t.user_idx and r.split = t.split and r.item_idx = t.target
),
cutoffs as (select unnest([{ks}]) as k),
models as (select distinct model, split from recs)
select m.model, m.split, c.k,
       coalesce(sum(case when h.rank < c.k then 1 else 0 end), 0) / n.n_users as recall,
       coalesce(sum(case when h.rank < c.k then 1.0 / log2(h.rank + 2) else 0 end), 0) / n.n_users as ndcg,
       n.n_users
from models m cross join cutoffs c cross join n
left join hits h on h.model = m.model and h.split = m.split
group by m.model, m.split, c.k, n.n_users
order by m.model, m.split, c.k
"""

LIST_CHECK_SQL = """
select model, split, count(*) as lists,
       min(n_items) as min_items, max(n_items) as max_items, sum(case when n_distinct < n_items then 1 else 0 end) as lists_with_repeats,
       sum(n_unknown) as unknown_items
from (
    select r.model, r.split, r.user_idx, count(*) as n_items, count(distinct r.item_idx) as n_distinct,
           sum(case when i.item_idx is null then 1 else 0 end) as n_unknown
    from read_parquet({recs}, union_by_name = true) r
    left join read_parquet('{items}') i on r.item_idx = i.item_idx
    where r.rank < {k}
    group by r.model, r.split, r.user_idx
)
group by model, split order by model, split
"""


def rescore(data_dir: Path, dataset: str, ks: list[int]) -> dict:
    tables = data_dir / "tables"
    part = f"dataset={dataset}/part.parquet"
    rec_files = sorted(str(p) for p in tables.glob(f"*_recommendations/{part}"))
    if not rec_files:
        raise SystemExit(f"no *_recommendations tables for {dataset!r} under {tables}")
    seq, items, evaluation = (tables / name / part for name in ("user_sequences", "items", "evaluation"))
    recs_sql = "[" + ", ".join(f"'{p}'" for p in rec_files) + "]"
    con = duckdb.connect()
    columns = con.execute(f"select * from read_parquet('{seq}') limit 0").df().columns
    scored = "in_eval" if "in_eval" in columns else "true"  # the evaluation users (a seeded sample when one was drawn)
    hand = con.execute(HAND_SCORE_SQL.format(seq=seq, recs=recs_sql, ks=", ".join(map(str, ks)), scored=scored)).df()
    lists = con.execute(LIST_CHECK_SQL.format(recs=recs_sql, items=items, k=max(ks))).df()
    asset = con.execute(f"select model, split, metric, k, value from read_parquet('{evaluation}') where metric in ('recall', 'ndcg')").df()

    rows, max_diff = [], 0.0
    for rec in hand.itertuples(index=False):
        for metric in ("recall", "ndcg"):
            mine = float(getattr(rec, metric))
            match = asset[(asset.model == rec.model) & (asset.split == rec.split) & (asset.metric == metric) & (asset.k == rec.k)]
            theirs = float(match["value"].iloc[0]) if len(match) else None
            diff = abs(mine - theirs) if theirs is not None else float("inf")
            max_diff = max(max_diff, diff)
            rows.append({"model": rec.model, "split": rec.split, "metric": f"{metric}@{rec.k}", "hand": mine, "evaluation_asset": theirs, "abs_diff": diff})
    return {
        "dataset": dataset,
        "data_dir": str(data_dir),
        "tables": [Path(p).parent.parent.name for p in rec_files],
        "n_users": int(hand["n_users"].iloc[0]),
        "max_abs_diff": max_diff,
        "agree": max_diff < 1e-9,
        "metrics": rows,
        "list_checks": lists.to_dict(orient="records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the run's data directory (holds tables/)")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--ks", default="5,10")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/rescore-<dataset>.json)")
    args = parser.parse_args(argv)
    result = rescore(Path(args.data_dir), args.dataset, [int(k) for k in args.ks.split(",")])
    out = Path(args.out or REPO / "benchmarks" / "results" / f"rescore-{args.dataset}.json")
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    for row in result["metrics"]:
        print(f"{row['model']:<28} {row['split']:<6} {row['metric']:<10} hand {row['hand']:.6f}  asset {row['evaluation_asset']}")
    print(f"max |hand - asset| = {result['max_abs_diff']:.3g} -> {'AGREE' if result['agree'] else 'DISAGREE'}; wrote {out}")
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
