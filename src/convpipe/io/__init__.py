"""Reading inputs and writing outputs; the rest of convpipe sees arrays and index sets."""

from convpipe.io.inputs import ArrayReader, InputSpec, open_input

__all__ = ["ArrayReader", "InputSpec", "open_input"]
