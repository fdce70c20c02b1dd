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


def aa_run(model, curve, *, norm="linf", clean=0.9, defense=None, flags=None):
    """An ``autoattack`` run whose robust-accuracy curve is ``curve`` (epsilon key -> accuracy)."""
    metrics = {
        "clean_accuracy": clean, "norm": norm, "robust_accuracy": {"0": clean, **curve},
        "robust_accuracy_8bit": {k: min(1.0, v + 0.05) for k, v in curve.items()}, "samples": 10, "version": "standard",
    }  # fmt: skip
    out = run(model, "autoattack", sum(curve.values()) / len(curve), defense=defense, clean=clean)
    out["metrics"], out["flags"] = metrics, flags or []
    return out


EPS8, EPS16 = "0.0313725", "0.0627451"


def test_threat_model_rows_are_ranked_by_autoattack_accuracy_with_cards_and_mean_score(tmp_path):
    res = results(
        [
            aa_run("digits-mlp-robust", {EPS8: 0.6, EPS16: 0.3}),
            aa_run("b", {EPS8: 0.6, EPS16: 0.4}, clean=0.95),         # ties at 8/255, wins at 16/255
            aa_run("c", {EPS8: 0.2}, defense="jpeg"),
            aa_run("d", {"0.5": 0.7}, norm="l2"),
            run("b", "fgsm", 0.8),                                        # only in the mean of scores
        ]
    )  # fmt: skip
    cards = {"b": {"architecture": "WideResNet-28-10", "reference": "https://example.org/paper", "licence": "CC-BY"}}
    table, probes = build_leaderboard(runs_frame([write(tmp_path, "one", res)]), cards=cards)
    threats = table.attrs["threat_models"]
    assert list(threats["threat_model"].unique()) == ["L2, eps 0.5", "Linf, eps 8/255", "Linf, eps 16/255"]
    at8 = threats[threats["threat_model"] == "Linf, eps 8/255"].set_index(["model", "defense"])
    assert at8.loc[("digits-mlp-robust", ""), "rank"] == 1 and at8.loc[("b", ""), "rank"] == 1  # ties share
    assert at8.loc[("c", "jpeg"), "rank"] == 3 and at8.loc[("b", ""), "clean_accuracy"] == 0.95
    at16 = threats[threats["threat_model"] == "Linf, eps 16/255"]
    assert list(at16["model"]) == ["b", "digits-mlp-robust"] and list(at16["rank"]) == [1, 2]
    assert at8.loc[("digits-mlp-robust", ""), "training"].startswith("PGD adversarial training")  # the zoo's card
    assert at8.loc[("b", ""), "architecture"] == "WideResNet-28-10" and at8.loc[("b", ""), "robust_accuracy_8bit"] == pytest.approx(0.65)
    assert at8.loc[("b", ""), "mean_score"] == pytest.approx((0.5 + 0.8) / 2)  # the secondary mean of scores
    markdown = to_markdown(table, probes)
    assert markdown.startswith("## Threat model L2, eps 0.5\n")
    assert markdown.index("## Threat model Linf, eps 8/255") < markdown.index("## All probes: mean of scores (secondary)")
    assert "| 1 | b | — | 0.600 | 0.950 | 0.650 | WideResNet-28-10 | — | — | https://example.org/paper | CC-BY | 0.650 |" in markdown
    assert "| rank | model | defense | clean accuracy | autoattack | fgsm | overall | coverage |" in markdown
    html = render_leaderboard(table, probes)
    assert html.count('<table class="threat-model">') == 3 and html.index("Threat model L2") < html.index('id="leaderboard"')


def test_threat_model_board_latest_run_wins_escapes_and_flags(tmp_path):
    old = write(tmp_path, "old", results([aa_run(EVIL, {EPS8: 0.1})], "2026-11-01T00:00:00+00:00"))
    flags = [{"code": "few-samples", "message": f"only 3 {EVIL}"}]
    new = write(tmp_path, "new", results([aa_run(EVIL, {EPS8: 0.4}, flags=flags)], "2026-11-20T00:00:00+00:00"))
    table, probes = build_leaderboard(runs_frame([old, new]), cards={EVIL: {"training": EVIL}})
    threats = table.attrs["threat_models"]
    assert len(threats) == 1 and threats.loc[0, "robust_accuracy"] == pytest.approx(0.4)
    html = write_leaderboard(table, probes, tmp_path / "board.html").read_text()
    assert "<script>alert" not in html and html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3
    assert 'href="new/report.html"' in html and "few-samples" in html
    markdown = to_markdown(table, probes)
    assert "<script>" not in markdown and "0.400 ⚑ few-samples" in markdown
    # no autoattack run: no threat-model section, the board is as before
    plain, plain_probes = build_leaderboard(runs_frame([write(tmp_path, "plain", results([run("a", "fgsm", 0.5)]))]))
    assert plain.attrs["threat_models"].empty and to_markdown(plain, plain_probes).startswith("| rank | model | defense |")


@pytest.mark.slow
def test_autoattack_audit_feeds_the_threat_model_leaderboard(tmp_path):
    """``robustcheck audit --probe autoattack:epsilons=[8/255]`` on a zoo model, then ``robustcheck leaderboard``."""
    from robustcheck.cli.main import main

    db = tmp_path / "results.db"
    for model in ("digits-mlp", "digits-mlp-robust"):
        code = main(["audit", "--model", model, "--probe", "autoattack:epsilons=[8/255,0.1],steps=20,queries=200",
                     "--defense", "none", "--samples", "16", "--out", str(tmp_path / model), "--results-db", str(db), "--quiet"])  # fmt: skip
        assert code == 0
    out = tmp_path / "board.md"
    assert main(["leaderboard", str(db), "--markdown", "--out", str(out)]) == 0
    markdown = out.read_text()
    assert markdown.startswith("## Threat model Linf, eps 8/255") and "## Threat model Linf, eps 0.1" in markdown
    threats = build_leaderboard(runs_frame([db]))[0].attrs["threat_models"]
    at = threats[threats["threat_model"] == "Linf, eps 0.1"].set_index("model")
    assert at.loc["digits-mlp-robust", "rank"] == 1 and at.loc["digits-mlp-robust", "robust_accuracy"] > at.loc["digits-mlp", "robust_accuracy"]


def test_model_cards_load_from_toml_with_one_line_errors(tmp_path):
    from robustcheck.reports.leaderboard import load_cards

    good = tmp_path / "cards.toml"
    good.write_text('["my-net"]\narchitecture = "ResNet-18"\nlicence = "MIT"\n')
    assert load_cards(good) == {"my-net": {"architecture": "ResNet-18", "licence": "MIT"}}
    bad = tmp_path / "bad.toml"
    bad.write_text('["my-net"]\nlicense = "MIT"\n')
    with pytest.raises(InputError, match="unknown fields license; fields: architecture"):
        load_cards(bad)
    bad.write_text("not toml [")
    with pytest.raises(InputError, match="not valid TOML"):
        load_cards(bad)
    with pytest.raises(InputError, match="no model-card file"):
        load_cards(tmp_path / "missing.toml")
