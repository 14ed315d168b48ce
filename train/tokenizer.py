"""A byte-level BPE tokenizer trained on the training conversations, for models built from scratch.

Presets without weights (the CPU demo) have no tokenizer of their own; one trained on the data's own text keeps
their vocabulary and embedding tables small. It uses the ChatML template, so labels and stop tokens work as for
Qwen2-style models.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from model.sequence import ROLES
from train.loader import shard_samples
from train.sources import Source

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]
# A space ends the word before it instead of starting the next (GPT-2's pieces are " red"): a word at the end of a
# line or a turn, which is where every short answer and every option text stands, is then one and the same token
# ("A. red" holds the token the answer "red" is). A model built from scratch has no way to learn that " red" and
# "red" mean one thing other than from data, and picking an option by its letter needs that match.
WORD_PIECES = r"\p{L}+ ?|\p{N}+ ?|[^\s\p{L}\p{N}]+ ?|\s+"


def conversation_texts(sources: list[Source], max_samples: int) -> Iterator[str]:
    """Every turn of the first `max_samples` samples, in shard order (deterministic); for a source with `context`
    its passage too, for a `describe` source the described text in place of the turns."""
    from collections import Counter

    seen = 0
    for source in sources:
        for shard in source.shards:
            for _, raw in shard_samples(shard, Counter()):
                if "json" not in raw:
                    continue
                try:
                    record = json.loads(raw["json"])
                except ValueError:
                    continue
                text_field = source.spec.context or source.spec.describe  # what the source trains on beside turns
                if text_field is not None:
                    yield str(record.get(text_field, ""))
                for turn in [] if source.spec.describe else record.get("conversations", []):
                    # the role as the chat template writes it, so "assistant" is one token, not seven
                    role = ROLES.get(str(turn.get("from", "")), "")
                    yield f"{role}\n" + str(turn.get("value", "")).replace("<image>", "")
                seen += 1
                if seen >= max_samples:
                    return


def train_tokenizer(sources: list[Source], directory: Path, vocab_size: int, max_samples: int
                    ) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PIECES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(conversation_texts(sources, max_samples), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>",
                                      bos_token="<|im_start|>")
    wrapped.chat_template = CHATML_TEMPLATE
    directory.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(directory)
    logger.info("trained a %d-token BPE tokenizer on up to %d samples -> %s", len(wrapped), max_samples, directory)
    return wrapped
