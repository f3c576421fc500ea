"""edgelm: compile and run small byte-level recurrent language models on edge devices.

This package root stays import-light (no numpy, no torch) so that `edgelm.runtime`
and the CLI start fast on a device without the compiler extras.
"""

__version__ = "0.1.0"
