"""What the tests of the runtimes that decode exported graphs (ONNX Runtime, OpenVINO)
share: a batch whose rows stop at different steps, and token ids to compare them by."""

from __future__ import annotations

import torch
from quant_roundtrip import FEATS

# two different inputs: a batch whose rows stop at different steps
BATCH = torch.cat([FEATS, FEATS.flip(-1)])


class Ids:
    """A tokenizer stand-in that returns the ids it is asked to decode (the runtime's and
    transformers' outputs compared as token ids, prompt and end-of-text removed)."""

    def __init__(self, special):
        self.special = set(special)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [[int(i) for i in row if int(i) not in self.special] for row in ids]


def ids_of(model_dir) -> Ids:
    from transformers import GenerationConfig

    g = GenerationConfig.from_pretrained(model_dir)
    return Ids({g.decoder_start_token_id, g.no_timestamps_token_id, g.eos_token_id})
