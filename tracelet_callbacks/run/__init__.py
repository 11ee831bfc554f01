"""The run layer: :class:`Experiment` (one AIM run and the calls a script makes on it), the one run
lifecycle every adapter uses, and process-exit handling."""
