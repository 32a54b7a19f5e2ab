"""The tiny byte-level BPE tokenizer of the default (``tiny``) base model.

Byte-level BPE trained on the pipeline's own corpus, with every digit split into its own token: numbers are
then spelled digit by digit, which is what lets a 1 M-parameter model learn carries (calibration.md §1). Only
two special tokens: ``<pad>`` = 0 and ``<eos>`` = 1; ``<eos>`` doubles as BOS (the trainers join examples as
``EOS ex EOS ex ...``). Nothing is added automatically on encode, and decoding is lossless for any text.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
SPECIAL_TOKENS = [PAD, EOS]  # ids 0 and 1, in this order


def train_tokenizer(
    lines: Iterable[str], vocab_size: int = 1024, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``lines`` and wrap it for transformers.

    ``save_pretrained(folder)`` on the result gives a folder that ``AutoTokenizer.from_pretrained(folder)``
    loads offline. Padding is on the left, as batched generation needs.
    """
    tok = Tokenizer(models.BPE())
    # Digits first, so a digit can never merge with anything (not even a preceding space).
    # add_prefix_space=False keeps decode(encode(x)) == x.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text is encodable
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [0, 1]:
        raise RuntimeError("special tokens did not get ids 0 and 1")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        padding_side="left",
        model_max_length=model_max_length,
        # the default clean-up would turn " ," into "," and break round trips
        clean_up_tokenization_spaces=False,
    )
