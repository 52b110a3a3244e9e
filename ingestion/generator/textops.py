"""Vectorised string helpers over numpy ``StringDType`` arrays (no Python loop per row)."""

from __future__ import annotations

import numpy as np

STR = np.dtypes.StringDType()
S = np.strings
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"), dtype=STR)


def strings(values) -> np.ndarray:
    """Any sequence or array -> a StringDType array."""
    return np.asarray(values, dtype=STR)


def hex_strings(values: np.ndarray, width: int = 16) -> np.ndarray:
    """uint64 values -> lowercase hex strings, the last ``width`` digits (width <= 16)."""
    as_bytes = np.ascontiguousarray(values.astype(">u8")).view(np.uint8).reshape(-1, 8)
    nibbles = np.stack([as_bytes >> 4, as_bytes & 15], axis=2).reshape(-1, 16)
    chars = _HEX_DIGITS[nibbles][:, 16 - width:]
    return np.frombuffer(np.ascontiguousarray(chars).tobytes(), dtype=f"S{width}").astype(STR)


def scramble(values: np.ndarray, salt: int) -> np.ndarray:
    """A bijective 64-bit mix (splitmix64 finaliser): sequential ids -> random-looking ids."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hashed_share(values: np.ndarray, salt: int, share: float) -> np.ndarray:
    """True for a fixed ``share`` of values, chosen by hash: the same value always gets the same
    answer, and no random draw is spent (the seeded streams stay as they are)."""
    return (scramble(values, salt) % np.uint64(1000)) < share * 1000


def padded(numbers: np.ndarray, width: int, prefix: str = "") -> np.ndarray:
    """Integers -> zero-padded strings with a prefix: padded([12], 6, "OUT-") -> "OUT-000012"."""
    return S.add(prefix, S.zfill(np.asarray(numbers).astype(STR), width))


def pick(choices, index: np.ndarray) -> np.ndarray:
    """Look up strings by index."""
    return strings(choices)[index]


def random_letters(rng: np.random.Generator, n: int) -> np.ndarray:
    return _LETTERS[rng.integers(0, 26, n)]


def typo(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One character edit per value: substitute, delete, insert or transpose (never the first letter)."""
    n = len(values)
    if n == 0:
        return values
    length = S.str_len(values)
    pos = 1 + (rng.random(n) * np.maximum(length - 1, 1)).astype(np.int64)  # 1..len-1
    letter = random_letters(rng, n)
    at_pos = S.slice(values, pos, pos + 1)
    letter = np.where(S.lower(at_pos) == letter, random_letters(rng, n), letter)  # a real change
    left = S.slice(values, 0, pos)
    right_from_pos = S.slice(values, pos, None)
    right_after_pos = S.slice(values, pos + 1, None)
    substituted = S.add(S.add(left, letter), right_after_pos)
    deleted = S.add(left, right_after_pos)
    inserted = S.add(S.add(left, letter), right_from_pos)
    transposed = S.add(S.add(S.add(left, S.slice(values, pos + 1, pos + 2)), at_pos), S.slice(values, pos + 2, None))
    op = rng.integers(0, 4, n)
    # Short strings and the last position cannot be transposed or deleted sensibly: substitute.
    op = np.where((length < 4) & (op == 1), 0, op)
    op = np.where((pos >= length - 1) & (op == 3), 0, op)
    out = np.select([op == 0, op == 1, op == 2], [substituted, deleted, inserted], transposed)
    return np.where(length >= 2, out, values)


def case_whitespace_noise(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """UPPER, lower, or stray spaces around the value."""
    kind = rng.integers(0, 5, len(values))
    return np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [S.upper(values), S.lower(values), S.add(" ", values), S.add(values, "  ")],
        S.add(S.add(" ", values), " "),
    )


def phone_national(e164: np.ndarray) -> np.ndarray:
    """+447700900123 -> 07700900123."""
    return S.add("0", S.slice(e164, 3, None))


def phone_formats(e164: np.ndarray, fmt: np.ndarray) -> np.ndarray:
    """Render UK numbers the ways people type them. fmt picks one of PHONE_FORMATS per row."""
    national = phone_national(e164)
    head, tail = S.slice(national, 0, 5), S.slice(national, 5, None)
    rendered = [
        e164,  # +447700900123
        S.add(S.add(head, " "), tail),  # 07700 900123
        S.add(S.add(S.add("(", head), ") "), tail),  # (07700) 900123
        S.slice(e164, 1, None),  # 447700900123
        S.add(S.add(S.add(S.add(head, "-"), S.slice(tail, 0, 3)), "-"), S.slice(tail, 3, None)),  # 07700-900-123
        national,  # 07700900123
        S.add(S.add(S.add("+44 ", S.slice(e164, 3, 7)), " "), S.slice(e164, 7, None)),  # +44 7700 900123
    ]
    return np.select([fmt == i for i in range(len(rendered) - 1)], rendered[:-1], rendered[-1])


PHONE_FORMATS = ("e164", "spaced", "bracketed", "no_plus", "dashed", "national", "spaced_e164")


def split_email(emails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """local part, domain (domain is "" when there is no @)."""
    at = S.find(emails, "@")
    at = np.where(at < 0, S.str_len(emails), at)
    return S.slice(emails, 0, at), S.slice(emails, at + 1, None)
