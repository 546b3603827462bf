"""Run records as text: a report rebuilt from committed records alone is byte-identical to the
one the sweep wrote; records that do not fit this gradreg version are refused, whole, before the
store is touched."""

import json
import shutil
from pathlib import Path

import pytest

from gradreg.cli import main
from gradreg.sweep.records import RecordsError, export_records, import_records, read_records
from gradreg.sweep.store import Store

SAMPLE = Path(__file__).parent / "data" / "records_sample"  # `gradreg run fig5 --profile quick`: 5 SIN runs


def records_dir(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(SAMPLE, out / "records", ignore=shutil.ignore_patterns("*.md"))
    return out


def test_report_rebuilt_from_committed_records_alone_is_identical(tmp_path, capsys):
    out = records_dir(tmp_path)
    assert main(["report", "fig5", "--out", str(out), "--profile", "quick"]) == 0
    assert "built" in capsys.readouterr().out
    assert (out / "fig5.quick.md").read_text() == (SAMPLE / "fig5.quick.md").read_text()


def test_export_after_import_gives_the_same_records(tmp_path):
    out = records_dir(tmp_path)
    with Store(tmp_path / "s.sqlite") as store:
        assert import_records(store, out / "records") == 5
        assert import_records(store, out / "records") == 0  # idempotent
        export_records(store, tmp_path / "again")
    assert (tmp_path / "again" / "runs.jsonl").read_text() == (SAMPLE / "runs.jsonl").read_text()


def _write_lines(path: Path, lines: list) -> None:
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def _first(tmp_path) -> tuple[Path, list]:
    out = records_dir(tmp_path)
    runs = out / "records" / "runs.jsonl"
    return runs, [json.loads(line) for line in runs.read_text().splitlines()]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda recs: recs[:2] + ["not json"], "not JSON"),
        (lambda recs: [dict(recs[0], run_key="0" * 32)] + recs[1:], "is not the key of its config"),
        (lambda recs: [dict(recs[0], config=dict(recs[0]["config"], warp=1))] + recs[1:], "unknown field"),
        (
            lambda recs: [dict(recs[0], config=dict(recs[0]["config"], lr=1))] + recs[1:],
            r"normal form \(lr: 1 here, 1.0 in this version\); it was made by gradreg 0.2",
        ),
        (
            lambda recs: (
                [dict(recs[0], config={k: v for k, v in recs[0]["config"].items() if k != "lr_gamma"})] + recs[1:]
            ),
            "normal form \\(lr_gamma missing\\)",
        ),
        (lambda recs: [dict(recs[0], extra=1)] + recs[1:], "unknown field"),
        (lambda recs: [{k: v for k, v in recs[0].items() if k != "experiments"}] + recs[1:], "lacks experiments"),
        (lambda recs: [dict(recs[0], metrics=None)] + recs[1:], "needs its metrics"),
        # a later line of another experiment: the runs before it used to be stored already
        (lambda recs: recs[:-1] + [dict(recs[-1], experiments=["zzz"], wall_time_s="12.5")], "wall_time_s"),
        (lambda recs: recs + [dict(recs[0], metrics={})], "is already on line 1"),
    ],
    ids=[
        "garbage",
        "wrong key",
        "other version's field",
        "int for float",
        "a field missing (other defaults)",
        "unknown record field",
        "no experiments",
        "no metrics",
        "a bad type on a later line",
        "a run twice",
    ],
)
def test_records_that_do_not_fit_are_refused_without_touching_the_store(tmp_path, damage, message):
    runs, recs = _first(tmp_path)
    damaged = damage(recs)
    runs.write_text("".join((x if isinstance(x, str) else json.dumps(x, sort_keys=True)) + "\n" for x in damaged))
    store_path = tmp_path / "s.sqlite"
    with Store(store_path) as store:
        store.put(
            "other",
            {
                "config": {"a": 1},
                "metrics": {},
                "curve": [],
                "wall_time_s": 1.0,
                "steps_per_s": 1.0,
                "device": "cpu",
                "torch_version": "t",
            },
        )
    with Store(store_path) as store, pytest.raises(RecordsError, match=message):
        import_records(store, runs.parent)
    with Store(store_path) as store:
        assert store.count() == 1


def test_a_partial_records_file_is_refused(tmp_path):
    runs, _ = _first(tmp_path)
    runs.write_text(runs.read_text()[:-200])  # cut mid-line, as a killed writer would leave it
    with pytest.raises(RecordsError, match="cut off"):
        read_records(runs.parent)


def test_report_from_damaged_records_is_one_line_and_creates_no_store(tmp_path, capsys):
    runs, recs = _first(tmp_path)
    runs.write_text(runs.read_text()[:-10])
    with pytest.raises(SystemExit) as e:
        main(["report", "fig5", "--out", str(runs.parent.parent)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "cut off" in err and "Traceback" not in err
    assert not (runs.parent.parent / "gradreg.sqlite").exists()


def test_import_replaces_a_stored_failure_with_a_recorded_success(tmp_path):
    """The store's rule (a success replaces a failure) holds for imports too; they used to
    skip every run the store held, failed or not."""
    runs, recs = _first(tmp_path)
    with Store(tmp_path / "s.sqlite") as store:
        store.put("fig5", {"config": recs[0]["config"], "error": "crashed"})
        assert import_records(store, runs.parent) == len(recs)
        rows = {r["run_key"]: r for r in store.rows()}
    assert rows[recs[0]["run_key"]]["error"] is None
    assert rows[recs[0]["run_key"]]["metrics"] == recs[0]["metrics"]


def test_report_imports_the_records_that_an_existing_store_lacks(tmp_path, capsys):
    """With a store already there, `gradreg report` used to ignore the records; it imports
    what the store lacks first, so the report is the committed one."""
    runs, recs = _first(tmp_path)
    full = runs.read_text()
    _write_lines(runs, recs[:3])
    out = runs.parent.parent
    assert main(["report", "fig5", "--out", str(out), "--profile", "quick"]) == 0
    assert (out / "fig5.quick.md").read_text() != (SAMPLE / "fig5.quick.md").read_text()
    runs.write_text(full)
    capsys.readouterr()
    assert main(["report", "fig5", "--out", str(out), "--profile", "quick"]) == 0
    assert f"imported {len(recs) - 3} run records" in capsys.readouterr().out
    assert (out / "fig5.quick.md").read_text() == (SAMPLE / "fig5.quick.md").read_text()


def test_index_counts_every_candidates_runs_of_a_tuned_cell_once(tmp_path):
    """A tuned cell trains every candidate lambda; with all of them stored the experiment is
    done. The index used to count the chosen candidate's runs only (and shared runs twice),
    so a finished tuned experiment read "running"."""
    from gradreg.sweep.index import experiment_line

    runs, recs = _first(tmp_path)
    plan = json.loads((runs.parent / "plans.json").read_text())["fig5@quick"]
    plan["cells"][0]["candidates"].append(plan["cells"][1]["candidates"][0])  # two candidates, one shared
    store_path = tmp_path / "s.sqlite"
    with Store(store_path) as store:
        import_records(store, runs.parent)
        store.put_plan("fig5", plan)
    line = experiment_line(store_path, "fig5", "quick")
    assert not line.status.startswith("running"), line.status
    assert line.status == "done (no table in the paper to compare with)"
