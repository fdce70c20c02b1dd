import multiprocessing as mp

import numpy as np
import pandas as pd

from robustcheck.api import Artifact
from robustcheck.run.checkpoint import RunStore


def _save(path: str, worker: int) -> None:
    store = RunStore(path)
    for i in range(20):
        store.save(f"{worker}-{i}", {"i": i}, {"score": i / 20}, pd.DataFrame({"index": [i]}), [])


def test_round_trip(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    records = pd.DataFrame({"index": [0, 1], "label": [3, 4], "min_epsilon": [0.1, None]})
    artifact = Artifact("sample 0", [np.zeros((3, 4, 4)), b"\x89PNG"], ["clean", "adv"])
    store.save("abc", {"model": "m"}, {"score": 0.5, "metrics": {"auc": 0.5}}, records, [artifact])
    result, back, artifacts = store.load("abc")
    assert result == {"score": 0.5, "metrics": {"auc": 0.5}}
    pd.testing.assert_frame_equal(back, records)
    assert artifacts[0].title == "sample 0" and artifacts[0].captions == ["clean", "adv"]
    assert artifacts[0].images[0].startswith(b"\x89PNG") and artifacts[0].images[1] == b"\x89PNG"
    assert store.load("missing") is None and store.run_ids() == {"abc"}
    store.clear()
    assert store.run_ids() == set()


def test_concurrent_appends_from_two_processes(tmp_path):
    path = str(tmp_path / "runs.sqlite")
    RunStore(path)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_save, args=(path, w)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(RunStore(path).run_ids()) == 40
