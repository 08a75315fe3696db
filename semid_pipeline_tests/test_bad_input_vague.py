"""Issue 17, class 4 (errors that named nothing): each bad input gives one line naming the file (or
the variable), the line where there is one, and the problem. The other cases of the class live
beside their mechanism: invalid SEMID_DATASET_OPTIONS JSON (test_bad_input_options.py), ``top_k: -3``
(test_bad_input_limits.py), a DuckDB file locked by a writer (test_bad_input_query.py)."""

import gzip
import json
import zlib

import pytest

from semid_pipeline.core.data.amazon import load_amazon_2014, load_p5_sequences
from semid_pipeline.core.data.incoming import load_incoming_items
from semid_pipeline.core.data.kuairand import KuaiRandParams, load_kuairand
from semid_pipeline.core.errors import InputError
from semid_pipeline_tests.test_data_kuairand import write_kuairand

DEEP = "[" * 100_000 + "]" * 100_000


def _p5(tmp_path, meta_lines):
    (tmp_path / "user_sequence.txt").write_text("U1 A1 A2 A3\nU2 A2 A3 A1\n")
    (tmp_path / "meta_Beauty.jsonl").write_text("\n".join(meta_lines) + "\n")
    return tmp_path


def _incoming(tmp_path, data: bytes):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "new.jsonl").write_bytes(data)
    return folder


def _kuairand_empty_log(tmp_path):
    root = tmp_path / "kr"
    write_kuairand(root)
    (root / "log_standard_4_08_to_4_21_pure.csv").write_text("")
    return root


def _truncated_gzip(tmp_path):
    """A 2014 review file cut in the middle of its compressed stream; returns (reviews, meta, expected line)."""
    lines = [json.dumps({"reviewerID": f"U{i % 50}", "asin": f"A{i % 40}", "unixReviewTime": 1_400_000_000 + i, "overall": 5.0})
             for i in range(20_000)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    cut = data[: len(data) // 2]
    reviews = tmp_path / "reviews_Beauty_5.json.gz"
    reviews.write_bytes(cut)
    partial = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)
    meta = tmp_path / "meta_Beauty.json.gz"
    meta.write_bytes(gzip.compress(b"{'asin': 'A1', 'title': 't'}\n"))
    return reviews, meta, partial.count(b"\n") + 1


CASES = {
    "deeply nested JSON in a metadata line": (
        lambda t: load_p5_sequences(_p5(t, ['{"asin": "A1", "title": "x"}', DEEP])),
        lambda t: (t / "meta_Beauty.jsonl", 2, "nested too deeply"),
    ),
    "deeply nested JSON in an incoming file": (
        lambda t: load_incoming_items(_incoming(t, (json.dumps({"item_id": "n1", "title": "ok"}) + "\n" + DEEP + "\n").encode())),
        lambda t: (t / "incoming" / "new.jsonl", 2, "nested too deeply"),
    ),
    "non-UTF-8 bytes in an incoming file": (
        lambda t: load_incoming_items(_incoming(t, b'{"item_id": "n1", "title": "ok"}\n{"item_id": "n2", "title": "caf\xe9"}\n')),
        lambda t: (t / "incoming" / "new.jsonl", 2, "not valid UTF-8 (invalid continuation byte"),
    ),
    "empty KuaiRand CSV": (
        lambda t: load_kuairand(KuaiRandParams(root=str(_kuairand_empty_log(t)))),
        lambda t: (t / "kr" / "log_standard_4_08_to_4_21_pure.csv", 1, "empty file: no header line"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_line_naming_file_line_and_problem(tmp_path, case):
    run, expect = CASES[case]
    with pytest.raises(InputError) as err:
        run(tmp_path)
    path, line, problem = expect(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: ") and problem in message, message
    assert "\n" not in message and (err.value.path, err.value.line) == (str(path), line)


def test_truncated_gzip_names_the_real_line(tmp_path):
    reviews, meta, expected = _truncated_gzip(tmp_path)
    assert expected > 1000  # the cut is far into the file, not at line 1
    with pytest.raises(InputError) as err:
        load_amazon_2014(reviews, meta)
    assert str(err.value).startswith(f"{reviews}:{expected}: cannot read the file") and "\n" not in str(err.value)
