"""A small byte-level BPE tokenizer with Llama-3 or Qwen2 (ChatML) chat template, built locally.

For tests and the demo: nothing is downloaded. It is trained in well under a
second on the synthetic vocabulary, has the special tokens of both chat
styles and an ``<image>`` token, and is returned as a
``transformers.PreTrainedTokenizerFast`` like a checkpoint's tokenizer.
"""

from __future__ import annotations

from longvila_jax.data import synthetic

# The public Llama-3 Instruct and Qwen2 Instruct templates (role headers, end-of-turn tokens).
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>")


def build_toy_tokenizer(style: str = "llama3", *, vocab_size: int = 512, image_token: bool = True):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE, ``vocab_size`` ids) with the ``style`` chat template.

    ``style``: ``"llama3"`` (bos ``<|begin_of_text|>``, turns end with
    ``<|eot_id|>``) or ``"chatml"`` (Qwen2: ``<|im_start|>``/``<|im_end|>``,
    default system prompt). ``<pad>`` is id 0. ``image_token=False`` leaves
    ``<image>`` out of the vocabulary (the model then uses the legacy -200).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in ("llama3", "chatml"):
        raise ValueError(f"unknown chat style {style!r}; use 'llama3' or 'chatml'")
    specials = [t for t in SPECIAL_TOKENS if image_token or t != "<image>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [" ".join(synthetic.WORDS)] * 4 + [
        "What digit is shown in one frame of the video? One frame of the video is a single colour. Which colour?",
        "What shape is drawn in one frame of the video? circle square triangle cross red green blue yellow",
        "The pass key is 0123456789. Remember it. What is the pass key? user assistant system",
        "You are a helpful assistant.\n\n", "0 1 2 3 4 5 6 7 8 9 purple orange",
    ]
    tok.train_from_iterator(corpus, trainer=trainer)
    if style == "llama3":
        bos, eos, template = "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE
    else:
        bos, eos, template = None, "<|im_end|>", CHATML_TEMPLATE
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>")
    out.chat_template = template
    return out
