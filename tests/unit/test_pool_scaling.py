"""The autoscaling policy: between min and max, up on backlog with everyone busy, down when idle."""

from enstratus_workers.config.settings import WorkerType
from enstratus_workers.daemons.subscriber.scaling import TypeView, plan

T = {"p": WorkerType("p", ("p1", "p2"), min=1, max=3)}


def test_starts_the_minimum_and_holds_at_the_maximum():
    assert plan(T, {}) == [("spawn", "p")]
    assert plan({"p": WorkerType("p", ("p1",), 2, 4)}, {}) == [("spawn", "p"), ("spawn", "p")]
    full = TypeView(active=3, busy=3, pending=50, members=(("p.1", None), ("p.2", None), ("p.3", None)))
    assert plan(T, {"p": full}) == []


def test_scales_up_only_when_work_waits_and_every_process_is_busy():
    assert plan(T, {"p": TypeView(active=1, busy=1, pending=4, members=(("p.1", None),))}) == [("spawn", "p")]
    assert plan(T, {"p": TypeView(active=2, busy=1, pending=4,
                                  members=(("p.1", None), ("p.2", 0.1)))}) == []


def test_scales_down_an_idle_process_above_the_minimum():
    idle = TypeView(active=2, busy=0, pending=0, members=(("p.1", 5.0), ("p.2", 45.0)))
    assert plan(T, {"p": idle}) == [("retire", "p.2")]
    at_min = TypeView(active=1, busy=0, pending=0, members=(("p.1", 300.0),))
    assert plan(T, {"p": at_min}) == []


def test_a_type_no_longer_wanted_is_retired_whole_idle_first():
    v = TypeView(active=2, busy=1, pending=0, members=(("x.1", None), ("x.2", 3.0)))
    assert plan(T, {"p": TypeView(1, 0, 0, (("p.1", 1.0),)), "x": v}) == [("retire", "x.2"), ("retire", "x.1")]


def test_a_lowered_maximum_retires_the_surplus():
    v = TypeView(active=3, busy=1, pending=0, members=(("p.1", None), ("p.2", 1.0), ("p.3", 9.0)))
    assert plan({"p": WorkerType("p", ("p1",), 1, 1)}, {"p": v}) == [("retire", "p.3"), ("retire", "p.2")]


def test_a_disabled_process_keeps_its_slot_so_nothing_is_started_in_its_place():
    # Given the only process of a type at min 1 disabled (it died too often)
    assert plan(T, {"p": TypeView(disabled=1)}) == []
    # But a backlog with every running process busy still grows the type up to max, counting it
    one_busy = TypeView(active=1, busy=1, pending=5, members=(("p.2", None),), disabled=1)
    assert plan(T, {"p": one_busy}) == [("spawn", "p")]
    two_busy = TypeView(active=2, busy=2, pending=5, members=(("p.2", None), ("p.3", None)), disabled=1)
    assert plan(T, {"p": two_busy}) == []
    # And disabled slots never count as running ones: min 2 with one disabled starts one, not two
    assert plan({"p": WorkerType("p", ("p1",), 2, 4)}, {"p": TypeView(disabled=1)}) == [("spawn", "p")]
