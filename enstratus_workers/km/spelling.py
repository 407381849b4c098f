"""How the KM tells two spellings of one account or credential name apart, and when it refuses one.

The KM compares accounts and names byte for byte (``db.identity.IdentityString`` columns), so
``sec_acct``, ``SEC_ACCT``, ``séc_acct`` and ``sec_acct `` are four different keys. Letting all
four exist would be a trap for operators and a disguise for mistakes (a job for ``SEC_ACCT``
quietly finding no credential, or a second credential nobody rotates), so the store refuses a put
whose account or name differs from an existing one only by what :func:`fold` removes: case,
accents (Unicode NFKD without combining marks, casefolded) and trailing whitespace.

The folded forms are stored as SHA-256 digests (``digest``): of fixed length whatever the
expansion of NFKD (one character can become eighteen), compared as ASCII on every database, and
indexed, so a unique index on (account digest, name digest) makes the rule hold under concurrent
puts too.
"""

from __future__ import annotations

import hashlib
import unicodedata

DIGEST_SIZE = 64   # hex characters of a SHA-256


def fold(text: str) -> str:
    """``text`` without case, accents and trailing whitespace: the spelling-insensitive key."""
    # Casefolding can produce characters that decompose further (and vice versa), hence twice.
    for _ in range(2):
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        text = text.casefold()
    return text.rstrip()


def digest(text: str) -> str:
    """The stored, indexed form of ``fold(text)``."""
    return hashlib.sha256(fold(text).encode("utf-8", "surrogatepass")).hexdigest()
