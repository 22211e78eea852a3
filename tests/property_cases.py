"""How many cases each property-based (Hypothesis) test ran; the root conftest prints them
at the end of the run, so a reader of CI's log sees how much was tried."""

from collections import Counter

CASES: Counter[str] = Counter()
