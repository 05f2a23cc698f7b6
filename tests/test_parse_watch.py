"""The parse-rate watch: warn once per collapse, stop below the stop threshold, never on a short history."""
from gflowvlm.parse_watch import ParseRateWatch


def test_warns_once_per_collapse_and_again_after_recovering():
    watch = ParseRateWatch(warn_below=0.2, window=3)
    messages = [watch.update(rate, step)[0] for step, rate in enumerate([1.0, 0.9, 0.1, 0.1, 0.0, 0.0, 0.0], 1)]
    assert [m is not None for m in messages] == [False, False, False, False, True, False, False]
    assert "only 7% of responses" in messages[4] and "step 5" in messages[4]
    for step, rate in enumerate([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], 8):  # recovers, then collapses again
        message, stop = watch.update(rate, step)
        assert not stop
    assert message is not None


def test_stops_below_the_stop_threshold_only_when_asked():
    assert not any(ParseRateWatch(window=2).update(0.0, step)[1] for step in range(10))
    watch = ParseRateWatch(stop_below=0.1, window=2)
    assert watch.update(0.05, 1) == (None, False)  # one iteration is not a trend
    message, stop = watch.update(0.05, 2)
    assert stop and "stop_below_parse_rate=0.1" in message
