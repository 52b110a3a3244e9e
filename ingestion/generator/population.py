"""People: true identities (names, emails, phones, addresses, households) and latent behaviour.

Everything is one array per attribute over all people (index = person number - 1), so the
simulation can act on everyone at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import names
from .catalog import CATEGORY_NAMES
from .identity_mess import MessRates
from .textops import STR, S, hex_strings, padded, pick, scramble, split_email, strings
from .timeline import US_PER_DAY, US_PER_HOUR, Timeline

MAX_EMAILS = 3
NAME_DERIVED_EMAIL_SHARE = 0.35  # the rest are handles unrelated to the name


def zipf_weights(n: int, offset: float, power: float) -> np.ndarray:
    w = 1.0 / (np.arange(n) + offset) ** power
    return w / w.sum()


@dataclass
class Devices:
    person: np.ndarray  # int32 owner
    anonymous_id: np.ndarray  # StringDType, uuid-shaped
    user_agent: np.ndarray  # index into names.USER_AGENTS
    ip: np.ndarray  # StringDType
    first_of_person: np.ndarray  # index of each person's first device
    count_of_person: np.ndarray  # devices per person (1-3)

    def __len__(self) -> int:
        return len(self.person)

    def pick(self, rng: np.random.Generator, person: np.ndarray) -> np.ndarray:
        """A device of each given person; the first device is used most."""
        count = self.count_of_person[person]
        choice = np.minimum((rng.random(len(person)) ** 1.8 * count).astype(np.int64), count - 1)
        return self.first_of_person[person] + choice


@dataclass
class Population:
    n: int
    person_id: np.ndarray  # P0000001...
    first_index: np.ndarray  # into names.FIRST_NAMES (for nickname lookup)
    first_name: np.ndarray
    last_name: np.ndarray
    dob_days: np.ndarray  # days since epoch
    # Current address; movers also have the address they left.
    street: np.ndarray
    city: np.ndarray
    postcode: np.ndarray
    moved: np.ndarray
    old_street: np.ndarray
    old_city: np.ndarray
    old_postcode: np.ndarray
    moved_us: np.ndarray  # -1 if never moved
    mobile: np.ndarray  # E.164, unique per person
    landline: np.ndarray  # E.164 shared by a household, "" otherwise
    household_id: np.ndarray  # -1 if living alone
    emails: np.ndarray  # (n, MAX_EMAILS), "" where absent; column 0 is the primary
    email_count: np.ndarray
    signup_us: np.ndarray
    # Accounts and memberships (the sources a person appears in).
    has_account: np.ndarray
    user_id: np.ndarray
    web_user: np.ndarray  # browses and buys online (everyone can click an email link)
    loyalty_member: np.ndarray
    loyalty_id: np.ndarray
    loyalty_enrolled_us: np.ndarray
    outlet_member: np.ndarray
    outlet_id: np.ndarray
    outlet_joined_us: np.ndarray
    subscriber: np.ndarray
    subscriber_id: np.ndarray
    subscribed_us: np.ndarray
    subscription_pending: np.ndarray
    # Latent behaviour: what the downstream models should recover.
    purchase_rate: np.ndarray  # purchases per month when active
    web_share: np.ndarray  # share of purchases made online
    browse_rate: np.ndarray  # browsing sessions per month
    cart_rate: np.ndarray  # abandoned carts per month
    discount_sensitivity: np.ndarray  # 0..1: uses discounts, hesitates at full price
    category_pref: np.ndarray  # (n, categories) dirichlet
    email_affinity: np.ndarray  # base open probability
    ticket_rate: np.ndarray  # support tickets per month
    satisfaction_mean: np.ndarray  # where the satisfaction random walk reverts to
    hazard_base: np.ndarray  # monthly churn log-odds before satisfaction effects
    devices: Devices


def _addresses(rng: np.random.Generator, city: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(city)
    number = rng.integers(1, 240, n).astype(STR)
    street_name = pick(names.STREET_NAMES, rng.integers(0, len(names.STREET_NAMES), n))
    suffix = pick(names.STREET_SUFFIXES, rng.integers(0, len(names.STREET_SUFFIXES), n))
    street = S.add(S.add(S.add(S.add(number, " "), street_name), " "), suffix)
    street = np.where(S.startswith(street_name, "The "), S.add(S.add(number, " "), street_name), street)

    areas = [c[1] for c in names.CITIES]
    area_count = np.array([len(a) for a in areas])
    area_flat = strings([a for group in areas for a in group])
    area_offset = np.cumsum([0] + list(area_count))[:-1]
    area = area_flat[area_offset[city] + rng.integers(0, 1 << 30, n) % area_count[city]]
    district = rng.integers(1, 30, n).astype(STR)
    # London-style "SW1A": some districts carry a letter.
    district = np.where(rng.random(n) < 0.08, S.add(district, pick(list("ABCEHMNPRVWXY"), rng.integers(0, 13, n))), district)
    unit_letters = list("ABDEFGHJLNPQRSTUWXYZ")
    inward = S.add(S.add(rng.integers(0, 10, n).astype(STR), pick(unit_letters, rng.integers(0, 20, n))),
                   pick(unit_letters, rng.integers(0, 20, n)))
    postcode = S.add(S.add(S.add(area, district), " "), inward)
    return street, postcode


def _email_name(names_: tuple[str, ...]) -> np.ndarray:
    """Names as they appear in email addresses: o'brien -> obrien, murphy-jones -> murphyjones."""
    return strings([n.lower().replace("'", "").replace(" ", "").replace("-", "") for n in names_])


_EMAIL_FIRST, _EMAIL_LAST = _email_name(names.FIRST_NAMES), _email_name(names.LAST_NAMES)


def _email_locals(rng: np.random.Generator, first_index: np.ndarray, last_index: np.ndarray,
                  birth_year: np.ndarray) -> np.ndarray:
    """Local parts: ~35% derived from the name (j.smith84, jane.smith), the rest handles."""
    n = len(first_index)
    f, l = _EMAIL_FIRST[first_index], _EMAIL_LAST[last_index]
    initial = S.slice(f, 0, 1)
    two_digits = S.zfill(rng.integers(0, 100, n).astype(STR), 2)
    year = S.slice(birth_year.astype(STR), 2, 4)
    words = strings(names.HANDLE_WORDS)
    w1 = words[rng.integers(0, len(words), n)]
    w2 = words[rng.integers(0, len(words), n)]
    number = rng.integers(1, 1000, n).astype(STR)
    # Each pattern is a list of parts, each part a fixed string or one of the arrays above.
    name_patterns = [
        (f, ".", l), (initial, ".", l), (f, l), (initial, ".", l, year), (f, ".", l, two_digits),
        (f, "_", l), (l, ".", f), (f, l, year),
    ]
    handle_patterns = [
        (w1, w2, number), (w1, number), (w1, "_", w2, two_digits), (w1, w2, two_digits), (w1, initial, number),
    ]
    name_derived = rng.random(n) < NAME_DERIVED_EMAIL_SHARE
    pattern = np.where(name_derived, rng.integers(0, len(name_patterns), n),
                       len(name_patterns) + rng.integers(0, len(handle_patterns), n))
    local = np.full(n, "", dtype=STR)
    for i, parts in enumerate(name_patterns + handle_patterns):  # a loop over 13 patterns, not rows
        rows = np.flatnonzero(pattern == i)
        value = np.full(len(rows), "", dtype=STR)
        for part in parts:
            value = S.add(value, part if isinstance(part, str) else part[rows])
        local[rows] = value
    return local


def _unique_emails(rng: np.random.Generator, emails: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Two people never share an address: append digits to later duplicates until unique."""
    flat = emails.reshape(-1).copy()
    mask = present.reshape(-1)
    for _ in range(10):
        import pandas as pd  # local: only needed here

        values = pd.Series(flat[mask].astype(object))
        dup = values.duplicated().to_numpy()
        if not dup.any():
            break
        idx = np.flatnonzero(mask)[dup]
        local, domain = split_email(flat[idx])
        flat[idx] = S.add(S.add(S.add(local, rng.integers(1, 100, len(idx)).astype(STR)), "@"), domain)
    return flat.reshape(emails.shape)


def _households(rng: np.random.Generator, n: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """household_id per person (-1 alone) and the index of each person's household head."""
    household_id = np.full(n, -1, dtype=np.int64)
    head = np.arange(n)
    members = rng.permutation(n)[: int(n * share)]
    sizes = rng.choice([2, 3, 4], size=max(len(members) // 2, 1), p=[0.5, 0.3, 0.2])
    ends = np.cumsum(sizes)
    sizes = sizes[ends <= len(members)]
    ends = np.cumsum(sizes)
    starts = ends - sizes
    used = members[: ends[-1]] if len(ends) else members[:0]
    group = np.repeat(np.arange(len(sizes)), sizes)
    household_id[used] = group
    head[used] = members[starts][group]
    return household_id, head


def build_population(rng: np.random.Generator, customers: int, timeline: Timeline, rates: MessRates) -> Population:
    """Everyone's true identity and latent behaviour; household, namesake and move shares come from ``rates``."""
    n = customers
    idx = np.arange(n)

    first_index = rng.choice(len(names.FIRST_NAMES), n, p=zipf_weights(len(names.FIRST_NAMES), 8, 0.8))
    last_index = rng.choice(len(names.LAST_NAMES), n, p=zipf_weights(len(names.LAST_NAMES), 6, 0.8))
    city_weights = np.array([c[2] for c in names.CITIES])
    city = rng.choice(len(names.CITIES), n, p=city_weights / city_weights.sum())
    street, postcode = _addresses(rng, city)

    # Households share the head's last name, address and a landline.
    household_id, head = _households(rng, n, rates.household)
    in_household = household_id >= 0
    last_index = last_index[head]
    city, street, postcode = city[head], street[head], postcode[head]
    landline_number = (idx[head] * 387_420_489 + int(rng.integers(0, 10**9))) % 10**9
    landline = np.where(in_household, padded(landline_number, 9, "+441"), "")

    # Namesakes: same first and last name as another person in the same city.
    namesake = np.flatnonzero(~in_household & (rng.random(n) < rates.namesake))
    twin = rng.integers(0, n, len(namesake))
    twin = twin[~in_household[twin] & (twin != namesake)]
    namesake = namesake[: len(twin)]
    first_index[namesake], last_index[namesake] = first_index[twin], last_index[twin]
    city[namesake] = city[twin]
    street[namesake], postcode[namesake] = _addresses(rng, city[namesake])

    first_name = pick(names.FIRST_NAMES, first_index)
    last_name = pick(names.LAST_NAMES, last_index)
    age_days = (rng.gamma(4.0, 4.5, n) + 18).clip(18, 90) * 365.25
    dob_days = (timeline.cutoff_us // US_PER_DAY - age_days).astype(np.int64)
    birth_year = (1970 + dob_days / 365.25).astype(np.int64)

    # Moves: the address a person left (sometimes in another city).
    moved = rng.random(n) < rates.moved
    old_city = np.where(rng.random(n) < 0.3, rng.choice(len(names.CITIES), n, p=city_weights / city_weights.sum()), city)
    old_street, old_postcode = _addresses(rng, old_city)
    moved_us = np.where(moved, rng.integers(timeline.start_us, timeline.cutoff_us, n), -1)

    mobile = padded((idx * 998_244_353 + int(rng.integers(0, 10**9))) % 10**9, 9, "+447")

    email_count = rng.choice([1, 2, 3], n, p=[0.8, 0.14, 0.06])
    domain_weights = np.array([d[1] for d in names.EMAIL_DOMAINS])
    emails = np.full((n, MAX_EMAILS), "", dtype=STR)
    for k in range(MAX_EMAILS):  # a loop over 3 columns, each over the people with that many emails
        has = np.flatnonzero(email_count > k)
        domain = pick([d[0] for d in names.EMAIL_DOMAINS],
                      rng.choice(len(domain_weights), len(has), p=domain_weights / domain_weights.sum()))
        local = _email_locals(rng, first_index[has], last_index[has], birth_year[has])
        emails[has, k] = S.add(S.add(local, "@"), domain)
    emails = _unique_emails(rng, emails, emails != "")

    signup_us = rng.integers(timeline.start_us - 730 * US_PER_DAY, timeline.cutoff_us - 3 * US_PER_DAY, n)

    web_user = rng.random(n) < 0.75
    has_account = web_user & (rng.random(n) < 0.5 / 0.75)
    # Full 16 hex digits: scramble is a bijection on 64 bits, so ids never collide.
    user_id = np.where(has_account, S.add("usr_", hex_strings(scramble(idx, 11), 16)), "")

    def joined_after_signup(mean_days: float) -> np.ndarray:
        return np.minimum(signup_us + (rng.exponential(mean_days, n) * US_PER_DAY).astype(np.int64),
                          timeline.cutoff_us - rng.integers(1, 48, n) * US_PER_HOUR)

    purchase_rate = rng.gamma(0.9, 0.28, n)
    loyalty_member = rng.random(n) < np.clip(0.38 + 0.7 * purchase_rate, 0, 0.9)
    # An affine map with a multiplier coprime to 90,000,000 is a bijection on [0, 90M): ids
    # look random but never collide (a hash taken modulo 90M would, by the birthday bound).
    loyalty_number = (idx.astype(np.int64) * 48_705_439 + 21_000_017) % 90_000_000 + 10_000_000
    loyalty_id = np.where(loyalty_member, padded(loyalty_number, 8, "LOY"), "")
    outlet_member = rng.random(n) < 0.10
    outlet_number = np.zeros(n, dtype=np.int64)
    outlet_number[outlet_member] = rng.permutation(outlet_member.sum()) + 1
    outlet_id = np.where(outlet_member, padded(outlet_number, 6, "OUT-"), "")
    subscriber = rng.random(n) < 0.70
    subscriber_id = np.where(subscriber, S.add("sub_", hex_strings(scramble(idx, 31), 16)), "")

    # Latent behaviour. Bigger spenders churn less; discount hunters churn more.
    discount_sensitivity = rng.beta(2, 5, n)
    satisfaction_mean = rng.normal(0, 0.6, n)
    hazard_base = (-4.1 - 0.8 * np.log(purchase_rate / 0.3 + 0.05) + 3.0 * (discount_sensitivity - 0.28)
                   + rng.normal(0, 0.2, n))

    # Devices: 1-3 per person; everyone has at least the browser they click email links in.
    device_count = rng.choice([1, 2, 3], n, p=[0.55, 0.33, 0.12])
    first_device = np.concatenate([[0], np.cumsum(device_count)[:-1]])
    device_person = np.repeat(idx, device_count).astype(np.int32)
    n_devices = len(device_person)
    raw = hex_strings(scramble(np.arange(n_devices), 41), 16)
    raw2 = hex_strings(scramble(np.arange(n_devices), 42), 16)
    anonymous_id = S.add(S.add(S.add(S.add(S.add(S.add(S.add(S.add(
        S.slice(raw, 0, 8), "-"), S.slice(raw, 8, 12)), "-4"), S.slice(raw, 13, 16)), "-a"), S.slice(raw2, 0, 3)), "-"),
        S.slice(raw2, 4, 16))
    ip = S.add(S.add(S.add(S.add(S.add("81.", rng.integers(0, 256, n_devices).astype(STR)), "."),
                             rng.integers(0, 256, n_devices).astype(STR)), "."), rng.integers(1, 255, n_devices).astype(STR))
    devices = Devices(device_person, anonymous_id, rng.integers(0, len(names.USER_AGENTS), n_devices), ip,
                      first_device, device_count)

    return Population(
        n=n,
        person_id=padded(idx + 1, 7, "P"),
        first_index=first_index,
        first_name=first_name,
        last_name=last_name,
        dob_days=dob_days,
        street=street,
        city=city,
        postcode=postcode,
        moved=moved,
        old_street=np.where(moved, old_street, street),
        old_city=np.where(moved, old_city, city),
        old_postcode=np.where(moved, old_postcode, postcode),
        moved_us=moved_us,
        mobile=mobile,
        landline=landline,
        household_id=household_id,
        emails=emails,
        email_count=email_count,
        signup_us=signup_us,
        has_account=has_account,
        user_id=user_id,
        web_user=web_user,
        loyalty_member=loyalty_member,
        loyalty_id=loyalty_id,
        loyalty_enrolled_us=joined_after_signup(120),
        outlet_member=outlet_member,
        outlet_id=outlet_id,
        outlet_joined_us=joined_after_signup(200),
        subscriber=subscriber,
        subscriber_id=subscriber_id,
        subscribed_us=joined_after_signup(60),
        subscription_pending=subscriber & (rng.random(n) < 0.02),
        purchase_rate=purchase_rate,
        web_share=np.where(web_user, rng.beta(2, 2, n), 0.0),
        browse_rate=np.where(web_user, rng.gamma(1.0, 0.11, n), 0.0),
        cart_rate=np.where(web_user, rng.gamma(1.0, 0.10, n), 0.0),
        discount_sensitivity=discount_sensitivity,
        category_pref=rng.dirichlet(np.full(len(CATEGORY_NAMES), 0.4), n),
        email_affinity=rng.beta(2, 4, n),
        ticket_rate=rng.gamma(0.5, 0.016, n),
        satisfaction_mean=satisfaction_mean,
        hazard_base=hazard_base,
        devices=devices,
    )
