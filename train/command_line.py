"""Bad input on the command line of the training tools (`train/sft.py`, `python -m ross.train.latent_cache`): one
`error: ...` line on stderr and status 2, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm.auto import tqdm

from ross.eval.generation import ModelPathError
from ross.train.config import ConfigError
from ross.train.sources import BadSampleError, DataFileError


# Bad input found before or during a run (a config that does not parse or check, a model path that is no model, a
# data file that is not JSON, a sample that cannot be used in error mode): the message names the file (and the key or
# sample).
INPUT_ERRORS = (ConfigError, ModelPathError, DataFileError, BadSampleError)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """`main(argv)` for the command line: status 0, or 2 with bad input as one `error: ...` line on stderr."""
    try:
        main(argv)
    except INPUT_ERRORS as error:
        for bar in list(getattr(tqdm, "_instances", ())):  # a progress bar left open: the error starts its own line
            bar.close()
        first, *rest = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        print(f"error: {first} {'; '.join(rest)}".rstrip(), file=sys.stderr, flush=True)
        return 2
    return 0
