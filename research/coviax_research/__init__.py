"""COViaX research tools, beside the product rather than in it: hybrid phantoms (:mod:`.phantom`), the
real patients of pinned public packages (:mod:`.realdata`), the accuracy evaluation (:mod:`.evaluate`,
:mod:`.evaluate_real`) and the statistics of measured volumes (:mod:`.stats`), with their commands
``coviax phantom``, ``coviax eval`` and ``coviax stats`` (registered as ``coviax.commands`` entry points).

Neither the pipeline nor the service imports anything here; this package imports the core.
"""
