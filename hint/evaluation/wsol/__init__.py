"""Weakly supervised localisation as wsolevaluation measures it: metrics (:mod:`.metrics`), the run over
a box set (:mod:`.run`), the served rows (:mod:`.served`) and the report (:mod:`.report`)."""
