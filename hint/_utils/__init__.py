"""Private helpers shared by every layer: file io (:mod:`.io`) and statistics (:mod:`.stats`)."""
