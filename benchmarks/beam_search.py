"""Constrained beam search vs Hugging Face ``generate`` + ``prefix_allowed_tokens_fn``, in one run.

Both decoders run on the same TIGER-size model (d_model 128, 4 + 4 layers, 6 heads x 64, d_ff
1024), the same SID trie and the same users, on one device:

* ours: ``constrained_beam_search`` (batched over users and beams, trie tables gathered on device)
  at ``--batch-size`` (the headline) and at every ``--our-batch-sizes`` entry;
* Hugging Face: ``HFRecommender.generate(num_beams, prefix_allowed_tokens_fn)`` with its KV cache
  (``devtools/hf_adapter.py``), at ``--batch-size`` and at every ``--hf-batch-sizes`` entry.

Speed-ups: ours at ``--batch-size`` vs HF at its best batch size, best vs best (each side at its
own fastest batch size: the headline), and same batch vs same batch.

A timed pass covers every user once (encoder + decoding + item lookup, batches of users sorted by
history length, results copied back to the host); each method gets one warm-up batch, then
``--repeats`` passes. The methods are interleaved finely: a pass walks the length-sorted users in
groups of the largest batch size, and every method decodes each group in turn (rotating who goes
first), so that a change in machine load hits all of them. The best pass is the headline number;
the median pass, the process CPU time, the best-vs-best ratio of every pass and ``uptime`` after
every pass are recorded too (on a shared machine they tell contention from speed). Agreement compares our top-``k``
lists with Hugging Face's at our batch size: ``exact`` (same items in the same order) and
``up_to_ties`` (per-rank scores within ``--tie-tol``, and items differ only at ranks tied within
``--tie-tol`` with a neighbouring rank in both lists, or at the last rank, whose tie partner may be
rank ``k + 1``).

Inputs, by default synthetic but Beauty-sized: 12,101 items with 3 levels of 256 codes drawn with
a Zipf-like prefix structure plus TIGER's appended de-duplication level, histories of 1..20 items
(geometric lengths, mean ~6, Zipf item popularity), and a randomly initialised model whose weights
are drawn with ``--init-std`` (large enough that next-token distributions are peaked, as in a
trained model, so that top-10 lists rarely tie). ``--dataset NAME`` reads the SIDs (and, when
materialized, the validation histories) from ``<data-dir>/tables/``; ``--model-dir`` loads a trained
``generative_recommender`` artifact (e.g. ``data/models/generative_recommender/dataset=NAME``) and
needs ``--dataset``.

    python benchmarks/beam_search.py                      # CPU: 512 users, all cores for both
    SEMID_NUM_THREADS=1 python benchmarks/beam_search.py --users 256 --batch-size 128 --our-batch-sizes 32 \\
        --out benchmarks/results/beam_search-cpu-1thread.json   # the committed 1-thread result
    python benchmarks/beam_search.py --device cuda --users 8192
    python benchmarks/beam_search.py --dataset amazon-beauty --model-dir data/models/generative_recommender/dataset=amazon-beauty

Writes ``benchmarks/results/beam_search-<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from run_pipeline import git_commit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from run_pipeline import hardware as run_pipeline_hardware  # noqa: E402
from semid_pipeline.core.artifacts import load_artifact  # noqa: E402
from semid_pipeline.core.device import configure_threads, resolve_device  # noqa: E402
from semid_pipeline.core.recommender.beam import constrained_beam_search  # noqa: E402
from semid_pipeline.core.recommender.data import PackedRows, build_inference_rows  # noqa: E402
from semid_pipeline.devtools.hf_adapter import HFRecommender, TriePrefixAllowedTokens, hf_beam_search  # noqa: E402
from semid_pipeline.core.recommender.model import GenerativeRecommender, RecommenderParams  # noqa: E402
from semid_pipeline.core.recommender.trie import SIDTrie  # noqa: E402
from semid_pipeline.core.recommender.vocab import SIDVocab  # noqa: E402
from semid_pipeline.core.storage import read_table, table_path  # noqa: E402
from semid_pipeline.core.tokenizers.collisions import append_dedup_token  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--users", type=int, default=None, help="Users decoded by each method (default: 512 on CPU, 8192 on CUDA).")
    p.add_argument("--batch-size", type=int, default=256, help="Users per batch of our beam search (and of the matching HF run).")
    p.add_argument("--our-batch-sizes", default=None, help="Comma-separated extra batch sizes of ours to time (default: 64 on CPU; 1024 on CUDA).")
    p.add_argument("--hf-batch-sizes", default=None, help="Comma-separated extra HF batch sizes to time (default: 8,16,32 on CPU; 64,1024 on CUDA).")
    p.add_argument("--hf-cache", choices=["on", "off"], default="on", help="HF generate with its KV cache (on, the default) or recomputing the decoder prefix every step.")
    p.add_argument("--beam-size", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--items", type=int, default=12_101, help="Synthetic catalogue size (Amazon Beauty 5-core: 12,101).")
    p.add_argument("--codebook-size", type=int, default=256, help="Synthetic codes per level.")
    p.add_argument("--levels", type=int, default=3, help="Synthetic code levels (a de-duplication level is appended).")
    p.add_argument("--zipf", type=float, default=0.7, help="Zipf exponent of code usage per level (synthetic SIDs).")
    p.add_argument("--init-std", type=float, default=0.2, help="Std of the random model's weights (ignored with --model-dir).")
    p.add_argument("--dataset", default=None, help="Read SIDs (and histories, if materialized) of this dataset partition.")
    p.add_argument("--data-dir", default=str(REPO / "data"), help="Pipeline data directory (with --dataset).")
    p.add_argument("--model-dir", default=None, help="Saved generative_recommender artifact to benchmark (needs --dataset).")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads, used by both methods (default: SEMID_NUM_THREADS or all cores).")
    p.add_argument("--repeats", type=int, default=3, help="Timed passes over all users per method (interleaved); the best is reported.")
    p.add_argument("--tie-tol", type=float, default=1e-4, help="Scores closer than this count as tied.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/beam_search-<device>.json).")
    return p.parse_args()


# ------------------------------------------------------------------------------------------ inputs
def zipf_sids(n_items: int, codebook_size: int, levels: int, exponent: float, seed: int) -> np.ndarray:
    """``(N, levels + 1)`` unique SIDs with a skewed prefix tree, plus TIGER's de-duplication level.

    Every level's code is a Zipf(``exponent``)-distributed rank, mapped to a code by a bijection
    that depends on the item's prefix (``code = (rank * a + b) mod K`` with ``a`` odd, ``a, b``
    hashed from the prefix), so every prefix has its own few popular children, as in RQ-VAE codes.
    """
    rng = np.random.default_rng(seed)
    if codebook_size & (codebook_size - 1):
        raise ValueError(f"--codebook-size must be a power of two (odd multipliers are then bijections), got {codebook_size}")
    weights = 1.0 / np.arange(1, codebook_size + 1) ** exponent
    codes = np.zeros((n_items, levels), dtype=np.int64)
    prefix = np.zeros(n_items, dtype=np.int64)  # integer id of each item's prefix
    for level in range(levels):
        rank = rng.choice(codebook_size, size=n_items, p=weights / weights.sum())
        mix = (prefix * 0x9E3779B1 + level * 0x85EBCA77 + seed) % (2**31 - 1)
        a, b = (mix % codebook_size) | 1, (mix // codebook_size) % codebook_size
        codes[:, level] = (rank * a + b) % codebook_size
        prefix = prefix * codebook_size + codes[:, level]
    return append_dedup_token(codes)[0]


def synthetic_histories(n_users: int, n_items: int, seed: int) -> List[np.ndarray]:
    """Beauty-like histories: 1..20 items (geometric lengths, mean ~6), Zipf(1) item popularity."""
    rng = np.random.default_rng([seed, 1])
    lengths = np.minimum(rng.geometric(1 / 6, n_users), 20)
    popularity = 1.0 / np.arange(1, n_items + 1)
    items = rng.permutation(n_items)[rng.choice(n_items, size=int(lengths.sum()), p=popularity / popularity.sum())]
    return np.split(items, np.cumsum(lengths)[:-1])


def dataset_inputs(data_dir: str, dataset: str, n_users: int, seed: int) -> Tuple[np.ndarray, Optional[List[np.ndarray]], Optional[np.ndarray]]:
    """SIDs of ``dataset`` and, when ``user_sequences`` is materialized, ``n_users`` sampled validation histories + user ids."""
    sem = read_table(data_dir, "semantic_ids", dataset).sort_values("item_idx")
    sids = np.stack(sem["sid"].to_numpy()).astype(np.int64)
    if not table_path(data_dir, "user_sequences", dataset).exists():
        return sids, None, None
    seqs = read_table(data_dir, "user_sequences", dataset)
    pick = np.sort(np.random.default_rng(seed).choice(len(seqs), min(n_users, len(seqs)), replace=False))
    histories = [np.asarray(seqs["train_items"].iloc[i], dtype=np.int64) for i in pick]
    return sids, histories, seqs["user_idx"].to_numpy(np.int64)[pick]


def random_model(vocab: SIDVocab, init_std: float, seed: int) -> GenerativeRecommender:
    """TIGER-size model (RecommenderParams defaults) with N(0, ``init_std``) weights and unit layer norms."""
    torch.manual_seed(seed)
    model = GenerativeRecommender(RecommenderParams(n_user_buckets=vocab.n_user_buckets), vocab)
    for param in model.parameters():
        if param.ndim >= 2:
            param.data.normal_(0.0, init_std)
    return model.eval()


# ------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    """Waits for queued GPU work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Times ``search(batch)`` on ``device`` over groups of rows, accumulating one pass per repeat.

    A pass covers every row once; the caller feeds it group by group (:meth:`run_group`) and
    interleaves the groups of all timers, so that a change in machine load within a pass hits every
    method alike. Within a group, rows (already sorted by length) go in batches of ``batch_size``.
    The first group run is preceded by a warm-up on the group's last (longest) batch. Per pass it
    records wall seconds and process CPU seconds (all threads; on a shared machine it excludes time
    spent descheduled).
    """

    def __init__(self, search: Callable, rows: PackedRows, batch_size: int, device: torch.device, top_k: int):
        self.search, self.rows, self.device, self.top_k = search, rows, device, top_k
        self.batch_size = batch_size
        self.items = np.empty((rows.n_rows, top_k), dtype=np.int64)
        self.scores = np.empty((rows.n_rows, top_k), dtype=np.float32)
        self.walls: List[float] = []
        self.cpus: List[float] = []
        self.warm = False

    def new_pass(self) -> None:
        self.walls.append(0.0)
        self.cpus.append(0.0)

    def run_group(self, group: np.ndarray) -> None:
        batches = [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        if not self.warm:
            self.search(self.rows.batch(batches[-1]).to(self.device))
            self.warm = True
        sync(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        for idx in batches:
            top_items, top_scores = self.search(self.rows.batch(idx).to(self.device))
            self.items[idx], self.scores[idx] = top_items.cpu().numpy(), top_scores.cpu().numpy()
        sync(self.device)
        self.walls[-1] += time.perf_counter() - wall
        self.cpus[-1] += time.process_time() - cpu

    def summary(self) -> Dict[str, object]:
        """Users/s of the best (fastest) and the median pass, by wall clock and by process CPU time."""
        n = self.rows.n_rows
        return {
            "batch_size": self.batch_size,
            "users_per_s": n / min(self.walls),
            "users_per_s_median": n / float(np.median(self.walls)),
            "users_per_cpu_s": n / min(self.cpus),
            "wall_seconds": self.walls,
            "cpu_seconds": self.cpus,
        }


def tied_ranks(scores: np.ndarray, tol: float) -> np.ndarray:
    """``[U, k]`` bool: the rank's score is within ``tol`` of a neighbouring rank's, or it is the last
    rank (whose tie partner may be rank ``k + 1``, outside the list)."""
    gap = np.abs(np.diff(scores, axis=1)) <= tol
    tied = np.zeros(scores.shape, dtype=bool)
    tied[:, 1:] |= gap
    tied[:, :-1] |= gap
    tied[:, -1] = True
    return tied


def agreement(items_a: np.ndarray, scores_a: np.ndarray, items_b: np.ndarray, scores_b: np.ndarray, tol: float) -> Dict[str, float]:
    """Share of users whose top-k lists match exactly / up to ties, and the largest per-rank score gap."""
    same_scores = (np.abs(scores_a - scores_b) <= tol).all(axis=1)
    swaps_tied = ((items_a == items_b) | (tied_ranks(scores_a, tol) & tied_ranks(scores_b, tol))).all(axis=1)
    return {
        "exact": float((items_a == items_b).all(axis=1).mean()),
        "up_to_ties": float((same_scores & swaps_tied).mean()),
        "max_abs_score_diff": float(np.abs(scores_a - scores_b).max()),
    }


# ------------------------------------------------------------------------------------------ report
def uptime() -> str:
    """``uptime`` of the machine (the load averages show how contended the timings were)."""
    try:
        return subprocess.check_output(["uptime"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def hardware(device: torch.device) -> Dict[str, object]:
    info: Dict[str, object] = {**run_pipeline_hardware(), "python": platform.python_version(), "device": str(device)}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    args = parse_args()
    threads = configure_threads(args.num_threads)
    device = resolve_device(args.device)
    n_users = args.users or (8192 if device.type == "cuda" else 512)
    hf_sizes = args.hf_batch_sizes or ("64,1024" if device.type == "cuda" else "8,16,32")
    hf_batch_sizes = sorted({args.batch_size, *(int(s) for s in hf_sizes.split(","))})
    our_sizes = args.our_batch_sizes or ("1024" if device.type == "cuda" else "64")
    our_batch_sizes = sorted({args.batch_size, *(int(s) for s in our_sizes.split(","))})
    if args.model_dir and not args.dataset:
        raise SystemExit("--model-dir needs --dataset (a trained model is only meaningful with its own SIDs)")

    histories, user_ids = None, None
    if args.dataset:
        sids, histories, user_ids = dataset_inputs(args.data_dir, args.dataset, n_users, args.seed)
    else:
        sids = zipf_sids(args.items, args.codebook_size, args.levels, args.zipf, args.seed)
    if histories is None:
        histories = synthetic_histories(n_users, len(sids), args.seed)
        user_ids = np.arange(n_users)
    if args.model_dir:
        model = load_artifact(args.model_dir)
        if not isinstance(model, GenerativeRecommender):
            raise SystemExit(f"{args.model_dir} holds a {type(model).__name__}, not a GenerativeRecommender")
        model = model.eval()
    else:
        model = random_model(SIDVocab.from_sids(sids, RecommenderParams().n_user_buckets), args.init_std, args.seed)
    model = model.to(device)
    vocab = model.vocab
    trie = SIDTrie.from_sids(sids, vocab.level_sizes).to(device)
    rows = build_inference_rows(histories, vocab.user_tokens(user_ids), vocab.item_tokens(sids), model.params.max_history_items)
    hf_model = HFRecommender(model).eval()
    allowed = TriePrefixAllowedTokens(trie, vocab)
    print(f"{len(sids):,} items, level sizes {vocab.level_sizes}, {len(histories):,} users on {device} ({threads} threads)", flush=True)

    def ours_search(batch):
        return constrained_beam_search(model, batch, trie, args.beam_size, args.top_k)

    def hf_search(batch):
        return hf_beam_search(hf_model, batch, trie, allowed, args.beam_size, args.top_k, use_cache=args.hf_cache == "on")

    timers = {
        **{("ours", bs): Timer(ours_search, rows, bs, device, args.top_k) for bs in our_batch_sizes},
        **{("hf", bs): Timer(hf_search, rows, bs, device, args.top_k) for bs in hf_batch_sizes},
    }
    # Interleaved: every pass walks the users (sorted by history length) in groups of the largest
    # batch size, and every method decodes each group in turn (rotating who goes first), so that
    # a change in machine load hits all of them.
    order = np.argsort(rows.enc_lengths, kind="stable")
    group_size = max(max(our_batch_sizes), max(hf_batch_sizes))
    groups = [order[i : i + group_size] for i in range(0, len(order), group_size)]
    loads = [uptime()]
    keys = list(timers)
    for rep in range(args.repeats):
        for timer in timers.values():
            timer.new_pass()
        for g, group in enumerate(groups):
            shift = (rep * len(groups) + g) % len(keys)
            for key in keys[shift:] + keys[:shift]:
                timers[key].run_group(group)
        for (method, bs), timer in timers.items():
            name = "ours" if method == "ours" else "hf generate"
            print(f"[{rep + 1}/{args.repeats}] {name}: {n_users / timer.walls[-1]:,.1f} users/s (batch {bs})", flush=True)
        loads.append(uptime())
    agree = agreement(
        timers["ours", args.batch_size].items, timers["ours", args.batch_size].scores,
        timers["hf", args.batch_size].items, timers["hf", args.batch_size].scores, args.tie_tol,
    )  # the searches are deterministic: the last pass's lists are every pass's

    runs = {method: [t.summary() for (m, _), t in timers.items() if m == method] for method in ("ours", "hf")}
    ours_main = next(r for r in runs["ours"] if r["batch_size"] == args.batch_size)
    ours_best = max(runs["ours"], key=lambda r: r["users_per_s"])
    hf_same = next(r for r in runs["hf"] if r["batch_size"] == args.batch_size)
    hf_best = max(runs["hf"], key=lambda r: r["users_per_s"])

    def ratio(ours: Dict[str, object], hf: Dict[str, object], key: str = "users_per_s") -> float:
        return float(ours[key]) / float(hf[key])

    # per pass (each pass interleaved with the others' at group level): fastest of ours / fastest of HF's
    per_pass_best_vs_best = [
        min(t.walls[r] for (m, _), t in timers.items() if m == "hf") / min(t.walls[r] for (m, _), t in timers.items() if m == "ours")
        for r in range(args.repeats)
    ]

    result = {
        "benchmark": "constrained beam search vs HF generate + prefix_allowed_tokens_fn",
        "ours": {"main": ours_main, "best": ours_best, "sweep": runs["ours"]},
        "hf_generate": {"same_batch": hf_same, "best": hf_best, "sweep": runs["hf"]},
        "speedup": {
            "vs_hf_best_batch": ratio(ours_main, hf_best),
            "best_vs_best_batch": ratio(ours_best, hf_best),
            "vs_hf_same_batch": ratio(ours_main, hf_same),
            "vs_hf_best_batch_median_runs": ratio(ours_main, hf_best, "users_per_s_median"),
            "vs_hf_best_batch_cpu_time": ratio(ours_main, hf_best, "users_per_cpu_s"),
            "best_vs_best_batch_per_pass": per_pass_best_vs_best,
            "best_vs_best_batch_median_of_passes": float(np.median(per_pass_best_vs_best)),
        },
        "agreement_top_k": agree,
        "settings": {
            "users": n_users,
            "beam_size": args.beam_size,
            "top_k": args.top_k,
            "repeats": args.repeats,
            "threads": threads,
            "threads_note": "both methods run with the same torch thread count" if device.type == "cpu" else None,
            "interleaving": f"per pass, groups of {group_size} users; every method decodes each group in turn",
            "uptime_before_and_after_each_pass": loads,
            "hf_use_cache": args.hf_cache == "on",
            "tie_tol": args.tie_tol,
            "items": len(sids),
            "level_sizes": list(vocab.level_sizes),
            "max_dedup": int(sids[:, -1].max()),
            "trie_nodes_per_level": [int(t.shape[0]) for t in trie.children],
            "history_length_mean": float(np.mean([len(h) for h in histories])),
            "model": args.model_dir or f"random TIGER-size, init_std={args.init_std}",
            "model_params": model.params.model_dump(),
            "dataset": args.dataset or f"synthetic (zipf={args.zipf}, seed={args.seed})",
        },
        "hardware": hardware(device),
        "git_commit": git_commit(),
    }
    out = Path(args.out or REPO / "benchmarks" / "results" / f"beam_search-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"ours {ours_main['users_per_s']:,.1f} users/s (batch {args.batch_size}; best {ours_best['users_per_s']:,.1f} at "
        f"{ours_best['batch_size']}), HF generate best {hf_best['users_per_s']:,.1f} users/s (batch {hf_best['batch_size']})"
    )
    print(json.dumps({k: result[k] for k in ("speedup", "agreement_top_k")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
