import json
import multiprocessing as mp
import sqlite3

import pandas as pd
import pytest

from robustcheck.errors import InputError
from robustcheck.reports.leaderboard import (
    build_leaderboard,
    render_leaderboard,
    to_markdown,
    write_leaderboard,
)
from robustcheck.run.history import SCHEMA_VERSION, ResultsDB, runs_frame

EVIL = "<script>alert(1)</script>"


def run(model, probe, score, defense=None, clean=0.9, params=None, status="ok"):
    return {
        "run_id": f"{model}-{probe}", "model": model, "defense": defense, "probe": probe, "params": params or {},
        "data": "digits", "samples": 10, "score": score, "metrics": {"clean_accuracy": clean},
        "status": status, "seconds": 1.0, "seed": 0,
    }  # fmt: skip


def results(runs, created="2026-11-25T00:00:00+00:00"):
    return {"robustcheck_version": "0.1.0", "created": created, "seed": 0, "environment": {}, "runs": runs}


def write(tmp_path, name, res):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(res))
    (folder / "report.html").write_text("<html></html>")
    return folder


def test_ranking_ties_and_missing_cells(tmp_path):
    res = results(
        [
            run("a", "fgsm", 0.5), run("a", "pgd", 0.3),
            run("b", "fgsm", 0.3), run("b", "pgd", 0.5),      # ties with a: overall 0.4
            run("c", "fgsm", 0.9),                              # missing pgd: ranked after complete rows
            run("d", "fgsm", 0.2), run("d", "pgd", 0.1),
            run("a", "fgsm", 0.45, defense="bit-depth"), run("a", "pgd", 0.2, defense="bit-depth"),
            run("e", "fgsm", None, status="error"),
        ]
    )  # fmt: skip
    table, probes = build_leaderboard(runs_frame([write(tmp_path, "one", res)]))
    assert probes == ["fgsm", "pgd"]
    by_row = {(r.model, r.defense): r for r in table.itertuples()}
    assert by_row[("a", "")].rank == 1 and by_row[("b", "")].rank == 1  # ties share a rank
    assert by_row[("a", "bit-depth")].rank == 3 and by_row[("d", "")].rank == 4 and by_row[("c", "")].rank == 5
    assert by_row[("a", "")].overall == pytest.approx(0.4) and by_row[("c", "")].coverage == 1
    assert pd.isna(by_row[("c", "")].pgd)
    assert ("e", "") not in by_row  # error runs have no score to rank
    markdown = to_markdown(table, probes)
    assert "| 1 | a |" in markdown and "—" in markdown


def test_latest_run_wins_unless_all(tmp_path):
    old = write(tmp_path, "old", results([run("a", "fgsm", 0.2)], "2026-11-01T00:00:00+00:00"))
    new = write(tmp_path, "new", results([run("a", "fgsm", 0.6)], "2026-11-20T00:00:00+00:00"))
    frame = runs_frame([new, old])
    assert build_leaderboard(frame)[0].loc[0, "fgsm"] == pytest.approx(0.6)
    assert build_leaderboard(frame, all_runs=True)[0].loc[0, "fgsm"] == pytest.approx(0.4)


def test_html_escapes_names_and_links_reports(tmp_path):
    folder = write(tmp_path, "x", results([run(EVIL, "fgsm", 0.5, defense=EVIL, params={"k": EVIL})]))
    table, probes = build_leaderboard(runs_frame([folder]))
    out = write_leaderboard(table, probes, tmp_path / "board" / "leaderboard.html")
    html = out.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="../x/report.html"' in html and "http" not in html
    assert "<script>alert" not in to_markdown(table, probes)
    assert render_leaderboard(*build_leaderboard(pd.DataFrame(columns=["status"]))).count("<tr>") == 1


def _append(path, worker):
    db = ResultsDB(path)
    for i in range(10):
        db.append(results([run(f"m{worker}", "fgsm", i / 10)]))


def test_database_append_version_and_concurrency(tmp_path):
    path = tmp_path / "results.db"
    db = ResultsDB(path)
    assert db.append(results([run("a", "fgsm", 0.5), run("a", "pgd", 0.4)]), report="r.html", hashes={"a": "abc"}) == 2
    frame = db.frame()
    assert list(frame["weights_hash"]) == ["abc", "abc"] and frame.loc[0, "params"] == {}
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    ResultsDB(path)  # reopening applies no migration twice
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_append, args=(str(path), w)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(ResultsDB(path).frame()) == 22
    assert len(runs_frame([path])) == 22


def test_newer_schema_and_bad_sources_are_refused(tmp_path):
    path = tmp_path / "results.db"
    ResultsDB(path)
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(InputError, match="newer"):
        ResultsDB(path)
    with pytest.raises(InputError, match="no results database"):
        runs_frame([tmp_path / "nothing"])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        runs_frame([bad])


def test_leaderboard_from_two_real_audits(tmp_path, capsys):
    from robustcheck.cli.main import main

    db = tmp_path / "results.db"
    for model in ("digits-mlp", "digits-cnn"):
        code = main(["audit", "--model", model, "--probe", "fgsm", "--defense", "none", "--defense", "bit-depth",
                     "--samples", "16", "--out", str(tmp_path / model), "--results-db", str(db), "--quiet"])  # fmt: skip
        assert code == 0
    frame = runs_frame([db])
    assert len(frame) == 4 and frame["weights_hash"].str.len().eq(16).all()
    assert frame.groupby("model")["weights_hash"].nunique().eq(1).all()
    out = tmp_path / "board.html"
    assert main(["leaderboard", str(db), "--out", str(out)]) == 0
    table, _ = build_leaderboard(frame)
    assert sorted(zip(table["model"], table["defense"], strict=True)) == [
        ("digits-cnn", ""), ("digits-cnn", "bit-depth"), ("digits-mlp", ""), ("digits-mlp", "bit-depth")
    ]  # fmt: skip
    assert list(table["rank"]) == sorted(table["rank"]) and table["fgsm"].between(0, 1).all()
    html = out.read_text()
    assert html.count("<tr>") == 5 and "digits-mlp/report.html" in html
    # results.json folders work as sources too, and Markdown output
    md = tmp_path / "board.md"
    assert main(["leaderboard", str(tmp_path / "digits-mlp"), str(tmp_path / "digits-cnn"), "--markdown", "--out", str(md)]) == 0
    assert md.read_text().startswith("| rank | model | defense |")


def test_flagged_cells_are_marked(tmp_path):
    flagged = run("a", "fgsm", 0.5)
    flagged["flags"] = [{"code": "constant-prediction", "message": f"predicts class 3 {EVIL}"}]
    clean = run("b", "fgsm", 0.4)
    clean["flags"] = []
    folder = write(tmp_path, "x", results([flagged, clean, run("a", "pgd", 0.3)]))
    table, probes = build_leaderboard(runs_frame([folder]))
    by_model = {r["model"]: r for _, r in table.iterrows()}
    assert by_model["a"]["flags"] == {"fgsm": flagged["flags"]} and by_model["b"]["flags"] == {}
    markdown = to_markdown(table, probes)
    assert "| 0.500 ⚑ constant-prediction | 0.300 |" in markdown and "| 0.400 | — |" in markdown
    assert "⚑ validity flag" in markdown
    html = render_leaderboard(table, probes)
    assert html.count('class="flagged"') == 1 and '<span class="flag">⚑ constant-prediction</span>' in html
    assert "predicts class 3 &lt;script&gt;" in html and EVIL not in html
    # through the results database, and with --all (flags of any run of the cell)
    db = ResultsDB(tmp_path / "results.db")
    db.append(results([flagged, clean]))
    db.append(results([run("a", "fgsm", 0.7)], created="2026-12-01T00:00:00+00:00"))
    assert build_leaderboard(db.frame())[0].set_index("model").loc["a", "flags"] == {}  # the latest run is clean
    assert build_leaderboard(db.frame(), all_runs=True)[0].set_index("model").loc["a", "flags"] == {"fgsm": flagged["flags"]}


def test_databases_from_before_flags_are_upgraded(tmp_path):
    from robustcheck.run.history import MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as con:  # a results database as robustcheck 0.1.0 wrote it: schema 1
        con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[1]:
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (1)")
        con.execute(
            "INSERT INTO runs (run_id, model, probe, params, score, metrics, status, created) "
            "VALUES ('r', 'old', 'fgsm', '{}', 0.5, '{}', 'ok', '2026-01-01')"
        )
    frame = ResultsDB(path).frame()
    assert frame.loc[0, "flags"] == [] and frame.loc[0, "model"] == "old"
    table, probes = build_leaderboard(frame)
    assert "⚑" not in to_markdown(table, probes)
