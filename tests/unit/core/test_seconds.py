from policyd.core.seconds import Seconds


def test_times_within_a_second_share_one_float_rounded_down() -> None:
    seconds = Seconds()
    first = seconds(100.2)
    assert first == 100.0 and seconds(100.9) is first
    assert seconds(101.0) == 101.0


def test_rounded_up_and_forgotten_after_a_move() -> None:
    seconds = Seconds(up=True)
    first = seconds(100.2)
    assert first == 101.0 and seconds(100.7) is first
    seconds.forget()
    assert seconds(100.7) is not first
