"""The relay's turns (``jobs/fairshare.py``): each queue's window dealt to the accounts waiting,
by weight, newcomers level with the least served, paused ones left out. Pure: no database."""

from __future__ import annotations

from collections import Counter

from enstratus_workers.jobs.fairshare import FairShare, Outlook, Paused


def dealt(plan) -> list:
    """The accounts in the order their turns were dealt."""
    return [plan.groups[i].account for i in plan.order]


def relay_all(fair: FairShare, plan) -> bool:
    """Every group had as many jobs as turns: settle it so."""
    limits = [g.limit for g in plan.groups]
    return fair.settle(plan, limits, limits)


def test_two_accounts_of_one_weight_take_turns_within_the_window():
    # Given a window of 6 and accounts A and B waiting on one queue
    fair = FairShare(window=6)
    plan = fair.plan(Outlook({}, {"default": ["A", "B"]}), batch=500)
    # Then they take turns, three each, and nothing more than the window is dealt
    assert dealt(plan) == ["A", "B", "A", "B", "A", "B"]
    assert {g.account: g.limit for g in plan.groups} == {"A": 3, "B": 3}


def test_the_room_is_the_window_less_what_is_queued_and_a_full_window_deals_nothing():
    fair = FairShare(window=10)
    # Given 7 first attempts queued on the queue / Then 3 turns are dealt
    assert len(fair.plan(Outlook({"default": 7}, {"default": ["A"]}), 500).order) == 3
    # Given 9: less than a quarter of the window is free / Then it waits for more room
    assert fair.plan(Outlook({"default": 9}, {"default": ["A"]}), 500).groups == ()
    # Given none queued / Then even a window of 1 takes its job at once
    assert len(FairShare(window=1).plan(Outlook({}, {"default": ["A"]}), 500).order) == 1
    # Given a batch smaller than a quarter of the window / Then the room, not the batch, decides
    assert len(FairShare(window=300).plan(Outlook({"default": 2}, {"default": ["A"]}), 2).order) == 2
    # Given a full (or overfull: two publishers filled it at once) window / Then none
    assert fair.plan(Outlook({"default": 10}, {"default": ["A"]}), 500).groups == ()
    assert fair.plan(Outlook({"default": 12}, {"default": ["A"]}), 500).groups == ()


def test_weights_give_an_account_that_many_turns_for_each_of_the_others():
    # Given account 42 of weight 3 and two others of weight 1
    fair = FairShare(window=100, weights={"42": 3})
    plan = fair.plan(Outlook({}, {"default": ["42", "7", "8"]}), batch=500)
    # Then 42 gets three fifths of the turns, the others one fifth each
    assert Counter(dealt(plan)) == {"42": 60, "7": 20, "8": 20}


def test_an_account_that_comes_later_is_not_held_back_by_the_others_history():
    # Given account A relayed alone for many passes (a backlog of thousands)
    fair = FairShare(window=10)
    for _ in range(100):
        relay_all(fair, fair.plan(Outlook({}, {"default": ["A"]}), 500))
    # When account B starts waiting, with the window refilling a few jobs at a time
    turns = []
    for _ in range(10):
        plan = fair.plan(Outlook({"default": 7}, {"default": ["A", "B"]}), 500)
        relay_all(fair, plan)
        turns.extend(dealt(plan))
    # Then B gets every other turn from its first pass on, neither none nor all
    assert Counter(turns) == {"A": 15, "B": 15}
    assert all(set(turns[i:i + 2]) == {"A", "B"} for i in range(0, 30, 2))


def test_only_what_was_relayed_counts_and_the_room_left_is_filled_at_once():
    # Given A and B waiting, B with one job only
    fair = FairShare(window=10)
    plan = fair.plan(Outlook({}, {"default": ["A", "B"]}), 500)
    a, b = plan.groups
    # When B's group yields one job of its five turns
    more = fair.settle(plan, [a.limit, 1], [a.limit, 1])
    # Then another pass should follow at once, for the room B left
    assert more is True
    # And B was charged one turn only: with A and C next, C starts level with B, not behind A
    plan = fair.plan(Outlook({"default": 6}, {"default": ["A", "B", "C"]}), 500)
    assert set(dealt(plan)[:2]) == {"B", "C"}


def test_a_pass_bounded_by_the_window_waits_one_bounded_by_the_batch_does_not():
    fair = FairShare(window=4)
    plan = fair.plan(Outlook({}, {"default": ["A"]}), 500)
    assert relay_all(fair, plan) is False          # the window is full: wait for a ring
    fair = FairShare(window=400)
    plan = fair.plan(Outlook({}, {"default": ["A"]}), 50)
    assert relay_all(fair, plan) is True           # the batch ran out first: go on
    assert fair.settle(plan, [0], [0]) is False    # nothing found (another publisher has them)


def test_paused_queues_and_accounts_get_no_turns():
    fair = FairShare(window=10)
    outlook = Outlook({}, {"default": ["A", "B", None], "sync": ["A"]},
                      Paused(queues=frozenset({"sync"}), accounts=frozenset({"B"})))
    plan = fair.plan(outlook, 500)
    # Then only the default queue's A and the jobs without an account are dealt turns
    assert {(g.queue, g.account) for g in plan.groups} == {("default", "A"), ("default", None)}


def test_the_queues_share_a_small_batch_turn_by_turn():
    # Given two queues with room and a batch of 4
    fair = FairShare(window=10)
    plan = fair.plan(Outlook({}, {"a": ["X"], "b": ["Y"]}), batch=4)
    # Then their turns are interleaved, so a batch cut short serves both
    assert [plan.groups[i].queue for i in plan.order][:4] == ["a", "b", "a", "b"]


def test_one_account_waiting_gets_every_turn_as_the_stride_would_deal_them():
    # Given one account waiting, then a second one joining it (the shortcut for one, the stride
    # for two), on a window of 300 with nothing queued
    fair = FairShare(window=300)
    alone = fair.plan(Outlook({}, {"default": ["A"]}), batch=500)
    # Then the one account gets all 300 turns, in one group
    assert dealt(alone) == ["A"] * 300 and alone.groups[0].limit == 300
    fair.settle(alone, [1], [1])          # it had one job: charged for one
    # When B comes: it starts level with A, so they alternate from the first turn
    both = fair.plan(Outlook({}, {"default": ["A", "B"]}), batch=4)
    assert sorted(dealt(both)[:2]) == ["A", "B"] and Counter(dealt(both)) == {"A": 2, "B": 2}


def test_a_pass_stops_reading_its_turns_once_every_row_read_is_placed():
    # Given a plan dealing a window of turns to an account with one job read (a lone job's pass)
    from enstratus_workers.db import outbox
    row = outbox.Relayed(7, "noop", "{}", "default", 0, 3)

    class Counting(list):
        reads = 0

        def __iter__(self):
            for item in super().__iter__():
                Counting.reads += 1
                yield item

    order = Counting([0] * 300)
    jobs, used = outbox._interleaved([[row]], order, batch=500)
    # Then the one job is placed, and the walk ends at the next turn, not after all 300
    assert jobs == [row] and used == [1] and Counting.reads == 2
