"""Output timestamps of a live input: rebased, unwrapped, increasing across jumps and reconnects."""
from fractions import Fraction

from streamer.live.timeline import WRAP, Timeline

TS = Fraction(1, 90000)


def test_rebased_to_zero_keeping_the_source_spacing():
    tl = Timeline(TS, Fraction(25))
    start = 10 * 3600 * 90000   # a camera ten hours into its clock
    assert [tl(start + k * 3600, TS) for k in range(4)] == [0, 3600, 7200, 10800]
    assert tl(start + 4 * 3600 + 1800, TS) == 16200   # variable spacing is the source's own


def test_33_bit_wrap_is_unwrapped():
    tl = Timeline(TS, Fraction(25))
    first = WRAP - 2 * 3600
    out = [tl(p, TS) for p in (first, first + 3600, (first + 7200) % WRAP, (first + 10800) % WRAP)]
    assert out == [0, 3600, 7200, 10800] and tl.wraps == 1


def test_discontinuities_continue_one_frame_later():
    tl = Timeline(TS, Fraction(25))
    assert [tl(p, TS) for p in (1000, 4600)] == [0, 3600]
    assert tl(1000, TS) == 7200            # the clock went back (an encoder restart)
    assert tl(1000 + 3600, TS) == 10800
    assert tl(10 ** 9, TS) == 14400        # a jump forward by hours
    assert tl.discontinuities == 2
    assert tl(None, TS) == 18000           # no pts: one frame on


def test_reconnect_leaves_a_gap_for_the_time_away_in_the_new_time_base():
    tl = Timeline(Fraction(1, 30), Fraction(30))
    assert [tl(p, Fraction(1, 30)) for p in (0, 1, 2)] == [0, 1, 2]
    tl.resume(away_seconds=2.0)
    # the new connection's clock starts anywhere, in another time base
    first_after = tl(777_000, Fraction(1, 1000))
    assert first_after == 2 + 60           # 2 s later, at 30 units per second
    assert tl(777_000 + 100, Fraction(1, 1000)) == first_after + 3
    assert tl.discontinuities == 0
