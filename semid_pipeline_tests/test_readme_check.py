"""The README check (devtools/readme_check.py) runs the ```bash blocks, skips the others, and fails on a
broken command or on a query that finds nothing; the real README's checked blocks name the virtualenv."""

import os
import re
import shlex
from pathlib import Path

from semid_pipeline.devtools.readme_check import check, checked_blocks, extract_blocks, main

ROOT = Path(__file__).resolve().parents[1]

FAKE = """# A project

```sh
exit 7   # a set-up command: shown, not run
```

```bash
echo checked > out.txt
```

```text
R@10 .1234
```

```bash
cat out.txt
{broken}
```
"""


def test_extracts_blocks_with_their_language_and_line():
    blocks = extract_blocks(FAKE.format(broken="true"))
    assert [(b.lang, b.line) for b in blocks] == [("sh", 3), ("bash", 7), ("text", 11), ("bash", 15)]
    assert [b.line for b in checked_blocks(FAKE.format(broken="true"))] == [7, 15]


def test_passes_a_working_readme_and_fails_a_broken_command(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(FAKE.format(broken="true"))
    assert check(readme, dict(os.environ), tmp_path, log=lambda *_: None) == []

    readme.write_text(FAKE.format(broken="semid_no_such_command --flag"))
    failures = check(readme, dict(os.environ), tmp_path, log=lambda *_: None)
    assert [b.line for b, _ in failures] == [15]
    assert "exit status 127" in failures[0][1] and "semid_no_such_command" in failures[0][1]


def test_a_query_that_prints_no_row_fails(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```bash\necho 'Empty DataFrame'\necho 'Columns: [item_id]'\n```\n")
    failures = check(readme, dict(os.environ), tmp_path, log=lambda *_: None)
    assert len(failures) == 1 and "printed no row" in failures[0][1]


def test_main_exits_non_zero_on_a_broken_readme(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("```bash\nfalse\n```\n")
    assert main([str(readme), "--data-dir", str(tmp_path)]) == 1
    assert "README.md:1: this block failed" in capsys.readouterr().err


def test_readme_commands_work_without_an_activated_virtualenv():
    # a new shell has no `python` with the project's packages: every command names .venv/bin/ or runs a script
    for block in checked_blocks((ROOT / "README.md").read_text()):
        for line in block.code.replace("\\\n", " ").splitlines():
            if not line.strip() or line.lstrip().startswith("#") or line[0].isspace():
                continue  # blank, comment, or the inside of a multi-line argument
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # a quote closed on a later line
                words = line.split()
            cmd = next((w for w in words if not re.match(r"^[A-Z_]+=", w)), "")
            assert cmd.startswith(".venv/bin/") or cmd == "bash", f"README block at line {block.line}: {line!r} needs .venv/bin/"


def test_readme_names_every_asset_and_job():
    # the asset graph in the README is the one the UI shows
    from semid_pipeline.definitions import defs

    readme = (ROOT / "README.md").read_text()
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    names |= {graph.get(k).assets_def.node_def.name for k in graph.get_all_asset_keys() if len(graph.get(k).assets_def.keys) > 1}
    names |= {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", readme))
    assert not missing, f"README.md does not name {missing}"


def test_the_demo_table_is_the_text_block_under_its_marker():
    from semid_pipeline.devtools.readme_check import readme_demo_table

    text = "```text\nnot this\n```\n<!-- demo-table: what demo.sh prints -->\n```text\n  model  R@10\n0 x  0.1\n```\n"
    assert readme_demo_table(text) == "  model  R@10\n0 x  0.1"
    assert readme_demo_table((ROOT / "README.md").read_text()).split()[:5] == ["model", "R@5", "N@5", "R@10", "N@10"]
