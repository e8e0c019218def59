from stillroom.registry import promotion_decision


def test_below_floor_stays_challenger() -> None:
    promote, why = promotion_decision(0.4, 0.5, None)
    assert not promote and "below the floor" in why


def test_first_model_over_floor_becomes_champion() -> None:
    assert promotion_decision(0.6, 0.5, None)[0]


def test_worse_than_champion_stays_challenger() -> None:
    promote, why = promotion_decision(0.6, 0.5, ("3", 0.7))
    assert not promote and "v3" in why


def test_equal_or_better_than_champion_is_promoted() -> None:
    assert promotion_decision(0.7, 0.5, ("3", 0.7))[0]
    assert promotion_decision(0.8, 0.5, ("3", 0.7))[0]
