"""Prompts as token ids: a word-level tokenizer of Hugging Face ``tokenizers`` trained on a dataset's captions,
every prompt padded or truncated to a fixed length as Stable Diffusion's 77 tokens of CLIP.

A prompt becomes ``[BOS] words... [EOS] [PAD]...``: lower-cased, split on whitespace and punctuation; a word not
seen in the captions is ``[UNK]``; a prompt longer than the length keeps its first words and its ``[EOS]``. The
empty prompt is ``[BOS] [EOS]`` then padding: what classifier-free guidance is taken against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL = (PAD, UNK, BOS, EOS)
"""Their ids are 0, 1, 2, 3."""


def cycled(prompts: Sequence[str], n: int) -> list[str]:
    """``n`` prompts: ``prompts`` in turn."""
    return [prompts[i % len(prompts)] for i in range(n)]


def phrasing_ids(tokenizer: PromptTokenizer, captions: Sequence[Sequence[str]]) -> np.ndarray:
    """[N, P, L] token ids of every image's P phrasings (an image with fewer repeats its own in turn)."""
    phrasings = max(len(p) for p in captions)
    return np.stack([tokenizer(cycled(p, phrasings)) for p in captions])


class PromptTokenizer:
    """A trained ``tokenizers.Tokenizer`` with fixed-length output."""

    def __init__(self, tokenizer, length: int):
        self.tokenizer, self.length = tokenizer, length
        tokenizer.enable_truncation(max_length=length)
        tokenizer.enable_padding(length=length, pad_id=self.pad_id, pad_token=PAD)

    @classmethod
    def train(cls, texts: Iterable[str], length: int) -> PromptTokenizer:
        """A word-level vocabulary of every word in ``texts``; ``length`` tokens per prompt (at least 3)."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

        if length < 3:
            raise ValueError(f"a prompt of {length} tokens holds no word between [BOS] and [EOS]; use at least 3")
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL)))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", special_tokens=[(t, tokenizer.token_to_id(t)) for t in (BOS, EOS)])
        return cls(tokenizer, length)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id(PAD)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.token_to_id(EOS)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """Token ids [N, length] (int64) of ``prompts``."""
        ids = np.array([e.ids for e in self.tokenizer.encode_batch(list(prompts))], dtype=np.int64)
        return ids.reshape(len(prompts), self.length)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str, length: int) -> PromptTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), length)
