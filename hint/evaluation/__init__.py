"""Measuring the service: concept presence (:mod:`.concepts`), neurons (:mod:`.neurons`) and weakly
supervised localisation against CAM and the grad-cam baselines (:mod:`.wsol`)."""
