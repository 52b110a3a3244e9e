"""Household members are not one person: a Splink edge whose own two records give different
first names merges only when their dates of birth agree (a shared surname, address and
landline score ~1.0 whatever the first names). Unit level, on the clustering's merge state."""

from core.settings.identity import IdentitySettings
from identity.clustering import _ClusterState


def _state(firsts, lasts, dobs, canon=None):
    n = len(firsts)
    cols = {"rid": list(range(n)), "source": ["pos"] * n, "entity": ["loyalty_members"] * n,
            "loyalty_id": [None] * n, "user_id": [None] * n, "subscriber_id": [None] * n, "anonymous_id": [None] * n,
            "email_canon": [None] * n, "phone": [None] * n, "first_name": firsts,
            "first_name_canon": canon or firsts, "last_name": lasts, "dob": dobs}
    return _ClusterState(IdentitySettings(), n, cols)


def test_two_first_names_of_one_household_do_not_merge_however_high_the_score():
    # (from the generator's 20k over-merges: oscar / simon green, one undated; harry / fraser
    # wright born eight years apart; both pairs at p = 1.0 on surname, address, postcode, phone)
    s = _state(["oscar", "simon", "harry", "fraser"], ["green", "green", "wright", "wright"],
               ["1996-09-04", None, "1998-02-21", "1990-03-02"])
    assert s.can_merge(0, 1, "splink", 1.0, 0, 1) == (False, "conflict:first_name")
    assert s.can_merge(2, 3, "splink", 1.0, 2, 3) == (False, "conflict:first_name")


def test_a_replaced_first_name_merges_when_the_birth_dates_agree():
    s = _state(["imogen", "jesse", "imogen", "jesse"], ["muehlberg"] * 4,
               ["1930-05-18", "1930-05-18", "1930-05-18", "1930-05-81"])
    assert s.can_merge(0, 1, "splink", 0.995, 0, 1) == (True, None)
    assert s.can_merge(2, 3, "splink", 0.995, 2, 3) == (True, None)  # a date one transposition off agrees


def test_compatible_first_names_need_no_birth_date():
    # a nickname (by its canonical form), a typo, and first name and surname swapped
    s = _state(["bill", "william", "olivia", "olvia", "smith", "john"], ["jones", "jones", "hall", "hall", "john", "smith"],
               [None] * 6, canon=["william", "william", "olivia", "olvia", "smith", "john"])
    assert s.can_merge(0, 1, "splink", 0.995, 0, 1) == (True, None)
    assert s.can_merge(2, 3, "splink", 0.995, 2, 3) == (True, None)
    assert s.can_merge(4, 5, "splink", 0.995, 4, 5) == (True, None)
    # a first name missing on one side is no disagreement
    t = _state(["anna", None], ["berg", "berg"], [None, None])
    assert t.can_merge(0, 1, "splink", 0.995, 0, 1) == (True, None)


def test_an_equal_email_between_namesakes_born_on_different_days_does_not_merge():
    # (from the customer-list bench at 300k: 130 of its 137 wrong edges were email edges between
    # two people of one name, a typo'd address landing on the other's, dates of birth differing)
    s = _state(["kate", "kate", "kate", "kate"], ["lee"] * 4, ["1971-03-02", "1988-11-20", "1971-03-02", "1971-03-20"])
    assert s.can_merge(0, 1, "email", 1.0, 0, 1) == (False, "conflict:date_of_birth")
    assert s.can_merge(0, 2, "email", 1.0, 0, 2) == (True, None)
    assert s.can_merge(0, 3, "email", 1.0, 0, 3) == (True, None)  # a typo'd date (one edit) still agrees
