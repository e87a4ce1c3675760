"""One model of a GPU host's state, shared by `devserver status`, `devserver doctor` and `devserver update`.

- :mod:`.expected`: what the resolved spec says the host must be (:class:`~.expected.Expected`, built once by
  :func:`~.expected.expected`).
- :mod:`.probe`: one read-only script that gathers the host's raw outputs in one round trip, locally or over SSH.
- :mod:`.observed`: the parsers from those raw outputs to :class:`~.observed.Observed` (pure, tested on real outputs).
- :mod:`.diff`: expected vs observed → :class:`~.diff.Drift` items; :mod:`.findings`: observed → doctor findings.
"""
