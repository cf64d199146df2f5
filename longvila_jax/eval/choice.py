"""Multiple-choice prompts (VideoMME wording) and robust extraction of the chosen letter.

``extract_choice(response, options)`` returns a letter of ``options`` or
None.  In order: a leading answer phrase ("The best answer is", "Answer:",
...) is removed; a response that starts with a letter (``B``, ``(B)``,
``B.``, ``B:``, ``b)``) gives it; then "answer/option is (B)"-style phrases;
then a lone capital letter of the options standing as its own word
(the article "A" counts only when it is not followed by a lower-case word);
then a response that quotes exactly one option's text.
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"
ANSWER_PREFIXES = ("the best answer is", "the correct answer is", "the answer is", "the answer", "best answer:",
                   "the best option is", "the correct option is", "best option:", "answer:", "option:", "answer")
PROMPT = ("Select the best answer to the following multiple-choice question based on the video. "
          "Respond with only the letter ({letters}) of the correct option.\n{question}\n{options}\n"
          "The best answer is:")
SUBTITLES = "This video's subtitles are listed below:\n{subtitles}\n"


def option_texts(options) -> dict[str, str]:
    """``{"A": text, ...}`` from a dict, or a list of ``"A. text"`` / plain texts (lettered in order)."""
    if isinstance(options, dict):
        return {str(k).strip().upper(): str(v).strip() for k, v in options.items()}
    out = {}
    for i, option in enumerate(options):
        option = str(option).strip()
        match = re.match(r"^\(?([A-J])\)?[.:)]\s*(.*)$", option, flags=re.S)
        if match:
            out[match.group(1)] = match.group(2).strip()
        else:
            out[LETTERS[i]] = option
    return out


def format_prompt(question: str, options, subtitles: str | None = None) -> str:
    """The VideoMME prompt: instructions, question, ``"A. ..."`` lines, ``The best answer is:``."""
    texts = option_texts(options)
    letters = list(texts)
    listed = ", ".join(letters[:-1]) + f", or {letters[-1]}" if len(letters) > 1 else letters[0]
    body = PROMPT.format(letters=listed, question=question.strip(),
                         options="\n".join(f"{k}. {v}" for k, v in texts.items()))
    return (SUBTITLES.format(subtitles=subtitles.strip()) + body) if subtitles else body


def _strip_prefixes(text: str) -> str:
    lowered = text.lower()
    for prefix in ANSWER_PREFIXES:
        at = lowered.find(prefix)
        if at != -1 and at < 20:
            return text[at + len(prefix):].strip()
    return text


def extract_choice(response: str, options) -> str | None:
    """The letter chosen in ``response`` among ``options`` (see module doc), or None."""
    texts = option_texts(options)
    letters = "".join(texts)
    text = (response or "").strip()
    if not text:
        return None
    text = _strip_prefixes(text).strip(" *:\"'`")
    cls = f"[{letters}{letters.lower()}]"
    match = re.match(rf"^\(?({cls})\)?(?:[.:)\],]|\s|$)", text)
    if match and not (match.group(1) == "A" and re.match(r"^A\s+[a-z]", text)):
        return match.group(1).upper()
    match = re.search(rf"(?:answer|option|choice)\s*(?:is|:)?\s*\(?({cls})\)?(?![A-Za-z])", text, flags=re.I)
    if match:
        return match.group(1).upper()
    for match in re.finditer(rf"(?<![A-Za-z])\(?([{letters}])\)?(?![A-Za-z])", text):
        if match.group(1) == "A" and re.match(r"A\s+[a-z]", text[match.start():]):
            continue  # the article "A"
        return match.group(1)
    quoted = [k for k, v in texts.items() if v and v.lower() in text.lower()]
    return quoted[0] if len(quoted) == 1 else None
