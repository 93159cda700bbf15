"""The built-in round stages, one module each, named for the stage (``sft-data`` is ``sft_data.py``)."""
