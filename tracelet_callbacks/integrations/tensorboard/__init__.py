"""TensorBoard: :mod:`.writer` (``TraceletWriter``), :mod:`.forwarding` (each ``add_*`` of
``SummaryWriter`` to the translator, and the patch ``start_logging`` puts on ``SummaryWriter``), and
:mod:`.importer` (event files written earlier, imported into AIM runs; needs no torch), with
:mod:`.events` (reading them) and :mod:`.runs` (the run of each folder, and the steps its scalars land at).

Nothing is imported here, so the importer's command line loads neither torch nor ``SummaryWriter``.
"""
