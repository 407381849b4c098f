"""The arithmetic of the cloud API limits (``cloud/rate_policy.py``): turns, AIMD, recovery."""

from __future__ import annotations

from enstratus_workers.cloud import rate_policy as rp
from enstratus_workers.cloud.rate_policy import KeyState, Policy

S = rp.US   # one second, in the policy's microseconds
T0 = 1_000 * S
POLICY = Policy(rate=4.0, max_wait_s=1.0, recover_after_s=10.0)


def turns(policy, state, now, n):
    out = []
    for _ in range(n):
        turn, state = rp.take_turn(policy, state, now)
        out.append(turn)
    return out, state


def test_calls_asking_at_once_get_turns_one_interval_apart_and_none_beyond_the_wait():
    # Given a key of 4 calls a second that may wait 1 s / When 6 calls ask at the same instant
    (a, b, c, d, e, f), state = turns(POLICY, KeyState(), T0, 6)
    # Then they get turns 0.25 s apart, as long as the wait stays within 1 s
    assert [t.at_us - T0 for t in (a, b, c, d, e)] == [0, S // 4, S // 2, 3 * S // 4, S]
    assert all(t.granted for t in (a, b, c, d, e)) and (e.wait_s, e.asked_us) == (1.0, T0)
    # and the sixth, 1.25 s off, is refused without taking the turn
    assert (f.granted, f.wait_s, f.at_us) == (False, 1.25, T0 + 5 * S // 4)
    assert state.next_us == T0 + 5 * S // 4
    # and a call after a quiet while goes at once
    later, _ = rp.take_turn(POLICY, state, T0 + 10 * S)
    assert (later.granted, later.wait_s) == (True, 0.0)


def test_a_throttle_halves_the_rate_once_for_the_calls_already_on_their_way():
    # Given three calls granted at 4/s
    (first, second, _), state = turns(POLICY, KeyState(), T0, 3)
    # When the first is throttled, with no Retry-After
    slow, state = rp.throttled(POLICY, state, T0 + S // 10, first.asked_us)
    # Then the rate is halved, and the key's next turn is at least an interval (at 2/s) away
    assert (slow.halved, slow.rate, state.rate) == (True, 2.0, 2.0)
    assert state.next_us >= T0 + S // 10 + S // 2
    # When the second, granted before the slow-down, is throttled too / Then it halves nothing
    again, state = rp.throttled(POLICY, state, T0 + S // 5, second.asked_us)
    assert (again.halved, again.rate) == (False, 2.0)
    # When a call granted after the slow-down is throttled / Then it halves it again
    (after,), state = turns(POLICY, state, T0 + S, 1)
    third, state = rp.throttled(POLICY, state, T0 + S + 1, after.asked_us)
    assert (third.halved, third.rate) == (True, 1.0)
    # and new turns are spaced at the slowed rate
    (x, y), _ = turns(Policy(4.0, 10.0, 10.0), state, T0 + 10 * S, 2)
    assert y.at_us - x.at_us == S


def test_a_retry_after_holds_the_key_and_the_rate_never_goes_below_the_floor():
    # Given a key throttled again and again, each time by a call granted after the last
    state, patient = KeyState(), Policy(4.0, max_wait_s=1e6, recover_after_s=1e6)
    for i in range(20):
        now = T0 + i * 100 * S
        (turn,), state = turns(patient, state, now, 1)
        slow, state = rp.throttled(patient, state, now + 1, turn.asked_us, retry_after_s=90)
    # Then its rate stops at one call a minute, and its next turn is after the Retry-After
    assert slow.rate == rp.FLOOR and state.next_us == now + 1 + 90 * S == slow.resume_us
    # and a key configured slower than the floor keeps its own rate as the floor
    slow, _ = rp.throttled(Policy(0.01, 1.0, 10.0), KeyState(), T0, T0)
    assert slow.rate == 0.01


def test_a_quiet_key_steps_back_up_a_tenth_at_a_time_to_its_configured_rate():
    # Given a key slowed from 4/s to 2/s at T0
    _, state = rp.throttled(POLICY, KeyState(), T0, T0)
    assert POLICY.effective(state) == 2.0
    # When nothing throttles it: no step before recover_after, then 0.4/s per quiet 10 s
    assert POLICY.effective(POLICY.recovered(state, T0 + 9 * S)) == 2.0
    assert round(POLICY.effective(POLICY.recovered(state, T0 + 10 * S)), 6) == 2.4
    assert round(POLICY.effective(POLICY.recovered(state, T0 + 35 * S)), 6) == 3.2
    # Then after enough quiet it is back at the configured rate, no longer slowed
    assert POLICY.recovered(state, T0 + 50 * S).rate is None
    # and a turn taken meanwhile stores the steps taken, counting the next from the last
    turn, after = rp.take_turn(POLICY, state, T0 + 25 * S)
    assert round(turn.rate, 6) == 2.8 and after.eased_us == T0 + 20 * S
    # and a key configured below its slowed rate since is simply at its configured rate
    assert Policy(1.0, 1.0, 10.0).recovered(state, T0).rate is None
