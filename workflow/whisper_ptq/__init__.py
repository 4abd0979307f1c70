"""whisper_ptq: the logic behind the Whisper post-training-quantization study pipeline.

The Snakemake rules under ``workflow/rules`` stay thin: each calls one sub-command of
``python -m whisper_ptq.cli``, which calls the functions of this package.
"""

__version__ = "0.1.0"


class PipelineError(Exception):
    """A user-facing error: bad input, bad config, or an impossible request.

    The message names the thing at fault (a file, a config key, an entry) and is printed
    as-is by the CLI, without a traceback.
    """
