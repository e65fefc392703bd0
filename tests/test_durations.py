"""tests/durations.py: the slowest-first order of a parallel native run, and the durations file it reads."""
import heapq

import pytest

from tests import durations


def _xdist_load_makespan(seconds, workers):
    """When the last test ends under xdist's load scheduler with --maxschedchunk 1: each worker gets two
    consecutive tests, then the next pending test each time one of its tests ends, and runs its tests in order."""
    pending = list(seconds)
    queues = [[pending.pop(0), pending.pop(0)] for _ in range(workers)]
    events = [(queue[0], w) for w, queue in enumerate(queues)]  # (end of the running test, worker)
    end = 0.0
    while events:
        now, w = heapq.heappop(events)
        end = max(end, now)
        queues[w].pop(0)
        if pending:
            queues[w].append(pending.pop(0))
        if queues[w]:
            heapq.heappush(events, (now + queues[w][0], w))
    return end


def test_the_slowest_start_on_different_workers_then_descending():
    ids = [f"t{i}" for i in range(10)]
    known = {"t3": 50.0, "t7": 40.0, "t1": 30.0, "t8": 20.0, "t5": 2.0}
    order = durations.slowest_first(ids, ids, known, workers=3)
    assert order[:6] == ["t3", "t9", "t7", "t6", "t1", "t4"]  # slow, fastest, ... (unknown: collection order)
    assert order[6:] == ["t8", "t5", "t0", "t2"]
    assert sorted(order) == sorted(ids)
    assert durations.slowest_first(ids[:3], ids[:3], known, workers=8) == ["t1", "t2", "t0"]
    with pytest.raises(ValueError, match="workers"):
        durations.slowest_first(ids, ids, known, workers=0)


def test_slowest_first_beats_collection_order_under_the_load_scheduler():
    seconds = [1.0] * 300 + [200.0, 150.0, 110.0, 100.0] + [1.0] * 100  # 240 s per worker at best
    ids = [str(i) for i in range(len(seconds))]
    known = dict(zip(ids, seconds))
    ordered = [known[i] for i in durations.slowest_first(ids, ids, known, workers=4)]
    assert _xdist_load_makespan(ordered, 4) == pytest.approx(240.0, abs=2)
    assert _xdist_load_makespan(seconds, 4) > 270


def test_update_merges_a_test_log(tmp_path):
    table = tmp_path / "durations.tsv"
    table.write_text("# old\n9.0\ta::kept\n5.0\ta::remeasured\n")
    log = tmp_path / "tests.log"
    log.write_text("passed\tcall\t7.5\ta::remeasured\nskipped\tsetup\t0.0\ta::skipped\npassed\tcall\t0.2\ta::quick\n"
                   "failed\tcall\t12.0\ta::failing\n    Traceback (an indented failure report)\n")
    assert durations.update(log, table, header="H200, commit abc") == 3
    assert durations.load(table) == {"a::failing": 12.0, "a::kept": 9.0, "a::remeasured": 7.5}
    assert "# H200, commit abc" in table.read_text().splitlines()[1]
    assert durations.load(tmp_path / "absent.tsv") == {}
