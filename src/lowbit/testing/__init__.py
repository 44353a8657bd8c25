"""Public testing kit for format authors: Hypothesis strategies and a conformance check.

    >>> from lowbit.testing import conformance
    >>> conformance.check("mxfp4")  # doctest: +SKIP

Needs the test extras (hypothesis, ml_dtypes).
"""

from __future__ import annotations

from lowbit.testing import conformance, strategies

__all__ = ["conformance", "strategies"]
