"""KuaiRand loader: files written in the official schema (with the bad inputs a user meets), the
real 27K sample in ../shared/datasets/kuairand-27k-sample, and the built-in tag pool."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from semid_pipeline.core.data.kuairand import KuaiRandParams, field_path, kuairand_tag_pool, load_kuairand
from semid_pipeline.core.data.registry import load_raw
from semid_pipeline.core.data.schema import validate_raw
from semid_pipeline.core.enrich.tags import TagPool
from semid_pipeline.core.errors import InputError

from .conftest import shared_dir

LOG_COLUMNS = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
               "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
               "comment_stay_time", "is_profile_enter", "is_rand", "tab"]
T0 = 1649376000000  # 2022-04-08 00:00:00 UTC in milliseconds


def make_log(n_users, n_videos, per_user, seed, start_ms=T0):
    """Rows in the official log schema: users watch videos, some clicked / liked / watched long."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        videos = rng.choice(n_videos, per_user, replace=False)
        times = start_ms + np.sort(rng.integers(0, 10 * 86_400_000, per_user))
        for v, t in zip(videos, times):
            dur = int(rng.integers(5_000, 120_000))
            play = int(dur * rng.uniform(0.1, 1.5))
            rows.append([u, 1000 + v, 20220408, 1200, int(t), int(rng.random() < 0.8), int(rng.random() < 0.2), 0, 0, 0, 0,
                         int(play >= dur), play, dur, 0, 0, 0, 0, 1])
    return pd.DataFrame(rows, columns=LOG_COLUMNS)


def make_video_features(n_videos, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "video_id": 1000 + np.arange(n_videos),
            "author_id": rng.integers(0, 20, n_videos),
            "video_type": rng.choice(["NORMAL", "AD"], n_videos, p=[0.85, 0.15]),
            "upload_dt": "2022-03-01",
            "upload_type": rng.choice(["ShortImport", "LongImport", "Web"], n_videos),
            "visible_status": "public",
            "video_duration": rng.integers(5_000, 120_000, n_videos).astype(float),
            "server_width": 720,
            "server_height": 1280,
            "music_id": rng.integers(0, 50, n_videos),
            "music_type": rng.choice([4, 9, 11], n_videos),
            "tag": [",".join(map(str, rng.choice(60, rng.integers(1, 3), replace=False))) for _ in range(n_videos)],
        }
    )


def write_kuairand(root, variant="pure", n_users=30, n_videos=60, per_user=12, seed=0, features=True):
    root.mkdir(parents=True, exist_ok=True)
    make_log(n_users, n_videos, per_user // 2, seed).to_csv(root / f"log_standard_4_08_to_4_21_{variant}.csv", index=False)
    make_log(n_users, n_videos, per_user - per_user // 2, seed + 1, T0 + 14 * 86_400_000).to_csv(
        root / f"log_standard_4_22_to_5_08_{variant}.csv", index=False)
    make_log(n_users, n_videos, 3, seed + 2, T0 + 14 * 86_400_000).to_csv(root / f"log_random_4_22_to_5_08_{variant}.csv", index=False)
    if features:
        make_video_features(n_videos, seed).to_csv(root / f"video_features_basic_{variant}.csv", index=False)
    pd.DataFrame({"user_id": np.arange(n_users), "user_active_degree": "high_active"}).to_csv(root / f"user_features_{variant}.csv", index=False)
    return root


def test_official_files_define_positives_and_convert_milliseconds(tmp_path):
    root = write_kuairand(tmp_path / "kr")
    write_kuairand(tmp_path / "kr", variant="1k", n_users=5, seed=9)  # another variant in the same folder is ignored
    raw = load_kuairand(KuaiRandParams(root=str(root), variant="pure"))
    validate_raw(raw, "kuairand")
    logs = pd.concat([pd.read_csv(root / f"log_standard_4_{d}_pure.csv") for d in ("08_to_4_21", "22_to_5_08")])
    clicked = logs[logs["is_click"] == 1]
    assert len(raw.interactions) == len(clicked)
    assert sorted(raw.interactions["timestamp"]) == sorted(clicked["time_ms"] // 1000)
    assert raw.interactions["timestamp"].min() >= T0 // 1000
    assert set(raw.interactions["user_id"]) <= {str(u) for u in range(30)}
    assert all(list(c) == [] for c in raw.items["categories"])
    text = raw.items.set_index("item_id").loc[str(clicked["video_id"].iloc[0]), "description"]
    assert "Video type:" in text and "Upload type:" in text and "Duration:" in text and "Tags:" in text

    # positive = like OR long view; with the random log too
    both = load_kuairand(KuaiRandParams(root=str(root), positive=["is_like", "long_view"], logs=["standard", "random"]))
    allrows = pd.concat([logs, pd.read_csv(root / "log_random_4_22_to_5_08_pure.csv")])
    assert len(both.interactions) == int(((allrows["is_like"] == 1) | (allrows["long_view"] == 1)).sum())
    ratio = load_kuairand(KuaiRandParams(root=str(root), positive=["play_ratio"], min_play_ratio=0.9))
    assert len(ratio.interactions) == int((logs["play_time_ms"] / logs["duration_ms"] >= 0.9).sum())


def test_bad_inputs_name_file_line_and_problem(tmp_path):
    root = write_kuairand(tmp_path / "kr", n_users=4, per_user=4)
    log = root / "log_standard_4_08_to_4_21_pure.csv"
    good = pd.read_csv(log)
    with pytest.raises(InputError, match=r"missing columns \['is_bookmark'\]") as err:
        load_kuairand(KuaiRandParams(root=str(root), positive=["is_bookmark"]))
    assert log.name in str(err.value) and ":1:" in str(err.value)
    with pytest.raises(ValidationError):
        KuaiRandParams(root=str(root), variant="10k")
    with pytest.raises(InputError, match="no KuaiRand"):
        load_kuairand(KuaiRandParams(root=str(root), variant="27k"))
    # times in seconds instead of the official milliseconds: named with the file line
    bad = good.copy()
    bad["time_ms"] = bad["time_ms"] // 1000
    bad.to_csv(log, index=False)
    with pytest.raises(InputError, match=r":2: time_ms must be unix time in milliseconds"):
        load_kuairand(KuaiRandParams(root=str(root)))
    bad = good.astype({"is_click": object})
    bad.loc[2, "is_click"] = "yes"
    bad.to_csv(log, index=False)
    with pytest.raises(InputError, match=r":4: is_click must be numeric, got 'yes'"):
        load_kuairand(KuaiRandParams(root=str(root)))
    good.drop(columns=["time_ms"]).to_csv(log, index=False)
    with pytest.raises(InputError, match=r"missing columns \['time_ms'\].*milliseconds"):
        load_kuairand(KuaiRandParams(root=str(root)))
    # extra columns, shuffled column order and tab separators are fine
    good.assign(extra="x")[list(reversed(good.columns)) + ["extra"]].to_csv(log, index=False, sep="\t")
    validate_raw(load_kuairand(KuaiRandParams(root=str(root))), "kuairand")
    with pytest.raises(InputError, match="KuaiRand folder not found") as err:
        load_raw("kuairand", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere" / "datasets" / "kuairand") in str(err.value)


def test_tag_pool_from_kuairand_fields(tmp_path):
    raw = load_kuairand(KuaiRandParams(root=str(write_kuairand(tmp_path / "kr"))))
    pool_table = kuairand_tag_pool(raw.items)
    pool = TagPool.from_table(pool_table, source="kuairand")
    assert pool.n_levels == 3 and {t.name for t in pool.levels[0]} >= {"short video", "medium-length video", "long video"}
    assert {t.name for t in pool.levels[1]} >= {"normal video", "ad video"}
    assert {t.name for t in pool.levels[2]} >= {"ShortImport upload", "Web upload"}
    assert field_path("Duration: 70 s (long video). Video type: AD. Upload type: Web. Tags: 3.") == ["long video", "ad video", "Web upload"]
    assert field_path(None) == ["unknown duration", "unknown video type", "unknown upload type"]
    # every item's own field path is a path of the pool
    keys = {t.key for t in pool.levels[2]}
    assert all(" > ".join(field_path(d)) in keys for d in raw.items["description"])


def test_real_27k_sample_rows():
    path = shared_dir() / "datasets" / "kuairand-27k-sample"
    if not (path / "log_standard_sample.tsv").exists():
        pytest.skip(f"KuaiRand sample not found at {path} (set SEMID_SHARED_DIR to the folder holding datasets/)")
    raw = load_kuairand(KuaiRandParams(root=str(path), variant="27k", log_files=["log_standard_sample.tsv"]))
    validate_raw(raw, "kuairand-27k-sample")
    log = pd.read_csv(path / "log_standard_sample.tsv", sep="\t")
    assert len(raw.interactions) == int((log["is_click"] == 1).sum())
    ts = pd.to_datetime(raw.interactions["timestamp"], unit="s")
    assert ts.min() >= pd.Timestamp("2022-04-07") and ts.max() <= pd.Timestamp("2022-04-22")
    # the sample's own 'timestamp' column (a date string) is an extra column and is not used
    first = log[log["is_click"] == 1].iloc[0]
    assert raw.interactions["timestamp"].iloc[0] == first["time_ms"] // 1000
    assert raw.items["description"].notna().mean() > 0.5  # durations from the log
    liked = load_kuairand(KuaiRandParams(root=str(path), log_files=["log_standard_sample.tsv"], positive=["label"]))
    assert len(liked.interactions) == int((log["label"] == 1).sum())
    with pytest.raises(InputError, match=r"missing columns \['is_like'\]"):  # the sample lacks the official is_like
        load_kuairand(KuaiRandParams(root=str(path), log_files=["log_standard_sample.tsv"], positive=["is_like"]))
