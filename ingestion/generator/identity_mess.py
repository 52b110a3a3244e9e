"""The identity mess: how each source writes a person's identifiers, at stated rates.

Rates apply per source record where a value is written. ``MessRenderer`` renders the
identifiers a source writes for a batch of records (one row per record, ``person`` says
whose) and counts every corruption it applies, per source and kind, for ``mess.json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from . import names
from .textops import S, case_whitespace_noise, hashed_share, phone_formats, pick, scramble, split_email, strings, typo


@dataclass(frozen=True)
class MessRates:
    # Names
    name_typo: float = 0.03  # a written name gets 1 (sometimes 2) character edits
    second_typo: float = 0.2  # of typo'd names, share that get a second edit
    nickname: float = 0.08  # first names with a known nickname written as it (Robert -> Bob)
    swapped_names: float = 0.015  # first and last name written in each other's field
    case_whitespace: float = 0.10  # names/emails in UPPER, lower or with stray spaces
    # Emails
    gmail_variant: float = 0.25  # gmail addresses in web/support written with dots or a +tag
    secondary_email: float = 0.5  # a person with several emails uses a non-primary one in a source
    # An email reaches the email tool from a sign-up form (the loyalty card's opt-in, else the
    # web account's) and support hears from the address the shop writes to: these sources hold
    # the email given at sign-up (so a secondary one is held by 2+ sources), the rest choose
    # on their own as above.
    email_follows_signup: float = 0.9
    # Phones: share written in each of textops.PHONE_FORMATS (E.164 first)
    phone_format_shares: tuple[float, ...] = (0.3, 0.25, 0.08, 0.07, 0.08, 0.17, 0.05)
    household_landline: float = 0.5  # household members give the shared landline, not their mobile
    # Addresses and people (applied when the population is built)
    moved: float = 0.08  # people who moved: the main loyalty export keeps the old address
    household: float = 0.15  # people in households of 2-4 sharing address, landline, last name
    namesake: float = 0.01  # people given the same first+last name as someone in their city
    # Junk typed into forms: test@test.com, 0000000000, "n/a"
    junk: float = 0.01
    # Missing values, per source and field (share of records where the field is empty)
    missing: dict[str, float] = field(hash=False, default_factory=lambda: {
        "web.email": 0.10, "web.first_name": 0.15, "web.last_name": 0.15, "web.phone": 0.20,
        "email.first_name": 0.15, "email.last_name": 0.18,
        "pos.email": 0.15, "pos.phone": 0.10, "pos.address": 0.08, "pos.date_of_birth": 0.15,
        "pos_outlet.email": 0.12, "pos_outlet.phone": 0.15, "pos_outlet.address": 0.10,
        "pos_outlet.date_of_birth": 0.20,
        "support.name": 0.10, "support.email": 0.12,
    })
    # Receipt identity: what a POS receipt carries (the rest carry nothing)
    receipt_loyalty: float = 0.55
    receipt_email_only: float = 0.10
    receipt_phone_only: float = 0.07
    # An email or phone typed at the till for an e-receipt is one the person uses in another
    # source (an email some other record of theirs holds; their mobile, held elsewhere), never
    # a value seen nowhere else: receipts of people the shop holds no such value for carry
    # none, and the email-only/phone-only shares above are kept by the people it does.
    receipt_contact_known: float = 1.0
    # Card payments: the payment processor hands the till a card token (a fingerprint of the
    # card, never its number), the same every time that card pays. Each person pays with one
    # card, or with one of two (second_card people, a second card for second_card_use of visits).
    second_card: float = 0.3
    second_card_use: float = 0.3
    # Web logins: a userId on a device means the site called identify(userId, traits) at login
    # (Segment), so each device's first logged-in session sends one with the device's traits.
    login_identify: float = 1.0
    # Web orders that also appear in POS (channel=web, order_ref = order_id): count them once
    web_order_in_pos: float = 0.30

    def as_dict(self) -> dict:
        return asdict(self)


MISSING_DAYS = -999_999  # a missing date (dates are days since epoch; writers.py tests for this value)

# Nicknames flattened for vectorised lookup by first-name index.
_NICK_COUNT = np.array([len(names.NICKNAMES.get(f, ())) for f in names.FIRST_NAMES])
_NICK_OFFSET = np.concatenate([[0], np.cumsum(_NICK_COUNT)[:-1]])
_NICK_FLAT = strings([nick for f in names.FIRST_NAMES for nick in names.NICKNAMES.get(f, ())] or [""])
SOURCE_SALT = {"web": 101, "email": 102, "pos": 103, "pos_outlet": 104, "support": 105}
SIGNUP_FOLLOWERS = ("email", "support")  # sources whose email comes from where the person signed up


class MessRenderer:
    """Renders identifiers for source records and counts the corruptions applied."""

    def __init__(self, rates: MessRates, rng: np.random.Generator, population):
        self.rates = rates
        self.rng = rng
        self.pop = population
        self.counts: Counter[str] = Counter()

    def _count(self, source: str, kind: str, mask: np.ndarray) -> None:
        self.counts[f"{source}.{kind}"] += int(np.count_nonzero(mask))

    def _chance(self, n: int, rate: float) -> np.ndarray:
        return self.rng.random(n) < rate

    def _missing(self, source: str, what: str, values: np.ndarray) -> np.ndarray:
        gone = self._chance(len(values), self.rates.missing.get(f"{source}.{what}", 0.0)) & (values != "")
        self._count(source, f"missing_{what}", gone)
        return np.where(gone, "", values)

    def _junk(self, source: str, what: str, values: np.ndarray, choices: tuple[str, ...]) -> np.ndarray:
        junk = self._chance(len(values), self.rates.junk) & (values != "")
        self._count(source, f"junk_{what}", junk)
        return np.where(junk, pick(choices, self.rng.integers(0, len(choices), len(values))), values)

    def _typos(self, source: str, values: np.ndarray) -> np.ndarray:
        hit = self._chance(len(values), self.rates.name_typo) & (S.str_len(values) >= 3)
        self._count(source, "name_typo", hit)
        out = values.copy()
        out[hit] = typo(values[hit], self.rng)
        twice = hit & self._chance(len(values), self.rates.second_typo)
        out[twice] = typo(out[twice], self.rng)
        return out

    def names(self, source: str, person: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last name as a source writes them: nicknames, typos, swaps, case, junk, missing."""
        n = len(person)
        first = self.pop.first_name[person]
        last = self.pop.last_name[person]
        first_index = self.pop.first_index[person]
        nick_count = _NICK_COUNT[first_index]
        use_nick = (nick_count > 0) & self._chance(n, self.rates.nickname)
        self._count(source, "nickname", use_nick)
        self.counts[f"{source}.nickname_eligible"] += int(np.count_nonzero(nick_count > 0))
        nick_at = _NICK_OFFSET[first_index] + self.rng.integers(0, 1 << 30, n) % np.maximum(nick_count, 1)
        nick = _NICK_FLAT[np.where(nick_count > 0, nick_at, 0)]
        first = np.where(use_nick, nick, first)
        first = self._typos(source, first)
        last = self._typos(source, last)
        swap = self._chance(n, self.rates.swapped_names)
        self._count(source, "swapped_names", swap)
        first, last = np.where(swap, last, first), np.where(swap, first, last)
        noisy = self._chance(n, self.rates.case_whitespace)
        self._count(source, "name_case_whitespace", noisy)
        first[noisy] = case_whitespace_noise(first[noisy], self.rng)  # (np.where made copies)
        last[noisy] = case_whitespace_noise(last[noisy], self.rng)
        first = self._junk(source, "first_name", first, names.JUNK_NAMES)
        first = self._missing(source, "first_name", first)
        last = self._missing(source, "last_name", last)
        self.counts[f"{source}.name_records"] += n
        return first, last

    def full_name(self, source: str, person: np.ndarray) -> np.ndarray:
        """One "First Last" field (support requester_name)."""
        first, last = self.names(source, person)
        full = S.strip(S.add(S.add(first, " "), last))
        return self._missing(source, "name", full)

    def email_column(self, source: str, person: np.ndarray) -> np.ndarray:
        """Which of a person's emails (column of ``pop.emails``, 0 = primary) a source holds:
        fixed per person and source. The email tool and support hold the email given where the
        person signed up (``email_follows_signup``): their loyalty card's, else their web account's."""
        if source in SIGNUP_FOLLOWERS:
            own = self._own_email_column(source, person)
            pop = self.pop
            signup = np.where(pop.loyalty_member[person], self._own_email_column("pos", person),
                              np.where(pop.has_account[person], self._own_email_column("web", person), own))
            follows = hashed_share(person, SOURCE_SALT[source] + 13, self.rates.email_follows_signup)
            return np.where(follows, signup, own)
        return self._own_email_column(source, person)

    def _own_email_column(self, source: str, person: np.ndarray) -> np.ndarray:
        count = self.pop.email_count[person]
        choice_hash = scramble(person, SOURCE_SALT[source])
        use_secondary = (count > 1) & ((choice_hash % 1000) < self.rates.secondary_email * 1000)
        column = np.where(use_secondary, 1 + (choice_hash >> np.uint64(20)) % np.maximum(count - 1, 1).astype(np.uint64), 0)
        return column.astype(np.int64)

    def email(self, source: str, person: np.ndarray, gmail_variants: bool, may_be_missing: bool = True,
              column: np.ndarray | None = None) -> np.ndarray:
        """The email a person uses in this source (sometimes not their primary), as written.
        ``column`` overrides which of the person's emails is written (see ``email_column``)."""
        n = len(person)
        column = self.email_column(source, person) if column is None else column
        self._count(source, "secondary_email", column > 0)
        email = self.pop.emails[person, column]
        if gmail_variants:
            local, domain = split_email(email)
            is_gmail = domain == "gmail.com"
            variant = is_gmail & self._chance(n, self.rates.gmail_variant)
            self._count(source, "gmail_variant", variant)
            self.counts[f"{source}.gmail_records"] += int(np.count_nonzero(is_gmail))
            length = S.str_len(local)
            pos = 1 + (self.rng.random(n) * np.maximum(length - 1, 1)).astype(np.int64)
            dotted = np.where(S.find(local, ".") >= 0, S.replace(local, ".", ""),
                              S.add(S.add(S.slice(local, 0, pos), "."), S.slice(local, pos, None)))
            tags = pick(("+shop", "+news", "+promo", "+orders", "+deals"), self.rng.integers(0, 5, n))
            variant_local = np.where(self.rng.random(n) < 0.5, dotted, S.add(local, tags))
            email = np.where(variant, S.add(S.add(variant_local, "@"), domain), email)
        noisy = self._chance(n, self.rates.case_whitespace / 2)
        self._count(source, "email_case_whitespace", noisy)
        upper = noisy & (self.rng.random(n) < 0.7)
        spaced = noisy & ~upper
        email = email.copy()
        email[upper] = S.upper(email[upper])
        email[spaced] = S.add(email[spaced], " ")
        email = self._junk(source, "email", email, names.JUNK_EMAILS)
        return self._missing(source, "email", email) if may_be_missing else email

    def uses_landline(self, source: str, person: np.ndarray) -> np.ndarray:
        """Whether a source holds the household's shared landline rather than the person's mobile."""
        landline = self.pop.landline[person]
        return (landline != "") & hashed_share(person, SOURCE_SALT[source] + 7, self.rates.household_landline)

    def phone(self, source: str, person: np.ndarray, mobile_only: bool = False, may_be_missing: bool = True) -> np.ndarray:
        """Mobile (or a household's shared landline), in the formats people type."""
        n = len(person)
        use_landline = np.zeros(n, bool) if mobile_only else self.uses_landline(source, person)
        self._count(source, "household_landline", use_landline)
        e164 = np.where(use_landline, self.pop.landline[person], self.pop.mobile[person])
        shares = np.array(self.rates.phone_format_shares)
        fmt = self.rng.choice(len(shares), n, p=shares / shares.sum())
        self._count(source, "phone_not_e164", fmt != 0)
        phone = phone_formats(e164, fmt)
        phone = self._junk(source, "phone", phone, names.JUNK_PHONES)
        return self._missing(source, "phone", phone) if may_be_missing else phone

    def address(self, source: str, person: np.ndarray, old: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Street, city, postcode. ``old`` writes a mover's previous address."""
        pop = self.pop
        moved = pop.moved[person]
        if old:
            street, city, postcode = pop.old_street[person], pop.old_city[person], pop.old_postcode[person]
            self._count(source, "old_address", moved)
        else:
            street, city, postcode = pop.street[person], pop.city[person], pop.postcode[person]
        city_name = pick([c[0] for c in names.CITIES], city)
        noisy = self._chance(len(person), self.rates.case_whitespace)
        self._count(source, "address_case_whitespace", noisy)
        street = street.copy()
        street[noisy] = S.upper(street[noisy])
        postcode = np.where(self._chance(len(person), self.rates.case_whitespace), S.replace(postcode, " ", ""), postcode)
        gone = self._chance(len(person), self.rates.missing.get(f"{source}.address", 0.0))
        self._count(source, "missing_address", gone)
        return (np.where(gone, "", street), np.where(gone, "", city_name), np.where(gone, "", postcode))

    def date_of_birth(self, source: str, person: np.ndarray) -> np.ndarray:
        """Days since epoch (negative before 1970), MISSING_DAYS where missing."""
        gone = self._chance(len(person), self.rates.missing.get(f"{source}.date_of_birth", 0.0))
        self._count(source, "missing_date_of_birth", gone)
        return np.where(gone, MISSING_DAYS, self.pop.dob_days[person])


def is_junk(values: np.ndarray) -> np.ndarray:
    junk = strings(names.JUNK_EMAILS + names.JUNK_PHONES + names.JUNK_NAMES)
    return np.isin(S.strip(values), junk)  # junk is written exactly as listed


def usable(values: np.ndarray) -> np.ndarray:
    """A written identifier that can link records: present and not junk."""
    return (S.str_len(S.strip(values)) > 0) & ~is_junk(values)

