"""Python imports this at start-up when this folder is on PYTHONPATH. With
RARESPECIES_PARAM_READS set, a stage process records the params.yaml keys it reads into that
folder (`param_access.install`); any other process is left alone."""

import os

if os.environ.get("RARESPECIES_PARAM_READS"):
    import param_access

    param_access.install(os.environ["RARESPECIES_PARAM_READS"])
