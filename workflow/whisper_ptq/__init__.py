"""whisper_ptq: the logic behind the Whisper post-training-quantization study pipeline.

The Snakemake rules under ``workflow/rules`` stay thin: each runs its step of
``whisper_ptq.steps`` from its job's spec and named paths, through ``python -m whisper_ptq.cli``.
"""

__version__ = "0.1.0"


class PipelineError(Exception):
    """A user-facing error: bad input, bad config, or an impossible request.

    The message names the thing at fault (a file, a config key, an entry) and is printed
    as-is by the CLI, without a traceback.
    """
