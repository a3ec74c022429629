"""System-prompt compression that never changes what the prompt instructs.

Safe mode (deterministic, no network) removes only decoration: trailing spaces, runs of
spaces, runs of blank lines, horizontal rules, repeated identical lines or sentences,
and redundant markdown emphasis (nested markers, bold inside headings). Protected spans
pass through byte for byte: fenced and inline code, JSON / XML / YAML blocks, template
placeholders (``{name}``, ``{{name}}``, ``<var>``), quoted strings, URLs, e-mail
addresses, numbers, and lines the user marks with ``protect`` patterns.

Inline spans are masked with private-use sentinels while the line is rewritten, then
restored; block spans (fences, structured blocks, marked lines) are copied untouched.

LLM mode asks a model for a terse rewrite and accepts it only if :func:`check_rewrite`
finds it shorter and still holding every protected span, every name and number, and
every negation and modal that carries an instruction.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

VERSION = "1"

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_PATTERNS = [
    re.compile(r"`[^`\n]+`"),  # inline code
    re.compile(r"\{\{[^{}\n]+\}\}|\{[A-Za-z_][\w.\-]*\}"),  # {{name}} and {name}
    re.compile(r"<[A-Za-z_][\w\-]*>"),  # <var> (and single XML-ish tags)
    re.compile(r"https?://[^\s<>\"')\]]+|www\.[^\s<>\"')\]]+"),  # URLs
    re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),  # e-mail addresses
    re.compile(r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d"),  # "quoted" and \u201cquoted\u201d
    re.compile(r"(?<![\w'])'[^'\n]{1,200}'(?![\w'])"),  # 'quoted' (not apostrophes)
    re.compile(r"(?<![\w.\ue000])[-+]?\d[\d,._:/%-]*"),  # numbers, dates, times, versions
]
_RULE = re.compile(r"^\s*([-*_=~])(\s*\1){2,}\s*$")
_HEADING_EMPHASIS = re.compile(r"^(\s*#{1,6}\s+)(\*\*|__)(.+?)\2\s*$")
_NESTED_EMPHASIS = re.compile(r"\*\*__(.+?)__\*\*|__\*\*(.+?)\*\*__|\*\*\*\*(.+?)\*\*\*\*")
_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_SENTINEL = re.compile("\ue000(\\d+)\ue001")
_YAML_LINE = re.compile(r"^\s*(?:-\s+)?[\w\-\"']+\s*:(?:\s|$)|^\s*-\s+\S")
_MIN_REPEAT = 20


@dataclass(frozen=True)
class Compression:
    """A compressed prompt; ``reason`` says why an LLM rewrite was not used, if it was not."""

    text: str
    mode: str
    original_tokens: int
    tokens: int
    reason: str | None = None

    @property
    def saved_tokens(self) -> int:
        return self.original_tokens - self.tokens


def compress_safe(text: str, protect: Sequence[str] = ()) -> str:
    """The safe compression of ``text``: same input, same output, always."""
    marked = [re.compile(pattern) for pattern in protect]
    blocks = _block_lines(text.split("\n"), marked)
    output: list[str] = []
    seen_lines: set[str] = set()
    seen_sentences: set[str] = set()
    for index, line in enumerate(text.split("\n")):
        if index in blocks:
            output.append(line)
            continue
        rewritten = _rewrite_line(line, seen_sentences)
        if rewritten is None:
            continue
        key = rewritten.strip()
        if len(key) >= _MIN_REPEAT and key in seen_lines:
            continue
        seen_lines.add(key)
        output.append(rewritten)
    return _collapse_blank_lines(output).strip("\n")


def _block_lines(lines: list[str], marked: Sequence[re.Pattern[str]]) -> set[int]:
    """Indexes of lines copied untouched: fences, structured blocks, marked lines."""
    blocks: set[int] = set()
    fence: str | None = None
    for index, line in enumerate(lines):
        opener = _FENCE.match(line)
        if fence is not None:
            blocks.add(index)
            if opener and opener.group(1) == fence:
                fence = None
        elif opener:
            fence = opener.group(1)
            blocks.add(index)
        elif any(pattern.search(line) for pattern in marked):
            blocks.add(index)
    blocks |= _structured_blocks(lines, blocks)
    return blocks


def _structured_blocks(lines: list[str], taken: set[int]) -> set[int]:
    """JSON (an object or array over one or more lines), XML elements, YAML mappings."""
    found: set[int] = set()
    index = 0
    while index < len(lines):
        if index in taken:
            index += 1
            continue
        end = _json_block_end(lines, index) or _xml_block_end(lines, index)
        end = end or _yaml_block_end(lines, index, taken)
        if end:
            found.update(range(index, end))
            index = end
        else:
            index += 1
    return found


def _json_block_end(lines: list[str], start: int) -> int | None:
    if not lines[start].lstrip().startswith(("{", "[")):
        return None
    for end in range(start + 1, min(len(lines), start + 400) + 1):
        try:
            json.loads("\n".join(lines[start:end]))
        except ValueError:
            continue
        return end
    return None


def _xml_block_end(lines: list[str], start: int) -> int | None:
    opening = re.match(r"^\s*<([A-Za-z_][\w\-.]*)(\s[^>]*)?>", lines[start])
    if not opening:
        return None
    closing = f"</{opening.group(1)}>"
    for end in range(start, min(len(lines), start + 400)):
        if closing in lines[end]:
            return end + 1
    return None


def _yaml_block_end(lines: list[str], start: int, taken: set[int]) -> int | None:
    end = start
    while end < len(lines) and end not in taken and _YAML_LINE.match(lines[end]):
        end += 1
    indented = any(lines[i].startswith((" ", "\t")) for i in range(start + 1, end))
    return end if end - start >= 2 and indented else None


def _rewrite_line(line: str, seen_sentences: set[str]) -> str | None:
    """The line without decoration; None when nothing of it is left to send."""
    if _RULE.match(line):
        return None
    masked, spans = mask(line)
    masked = _SPACES.sub(" ", masked.rstrip())
    heading = _HEADING_EMPHASIS.match(masked)
    if heading:
        masked = heading.group(1) + heading.group(3)
    masked = _NESTED_EMPHASIS.sub(_single_emphasis, masked)
    rewritten = unmask(masked, spans)
    if not rewritten.strip():
        return ""
    return _drop_repeated_sentences(rewritten, seen_sentences)


def _single_emphasis(match: re.Match[str]) -> str:
    """Bold inside bold is bold once."""
    inner = match.group(1) or match.group(2) or match.group(3)
    return f"**{inner}**"


def _drop_repeated_sentences(line: str, seen: set[str]) -> str | None:
    indent = line[: len(line) - len(line.lstrip())]
    kept = []
    for sentence in _SENTENCE_SPLIT.split(line.strip()):
        if len(sentence) >= _MIN_REPEAT and sentence in seen:
            continue
        seen.add(sentence)
        kept.append(sentence)
    return indent + " ".join(kept) if kept else None


def _collapse_blank_lines(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return "\n".join(out)


def mask(line: str) -> tuple[str, list[str]]:
    """Replace protected inline spans with sentinels; returns the spans to restore."""
    spans: list[str] = []

    def keep(match: re.Match[str]) -> str:
        spans.append(match.group(0))
        return f"\ue000{len(spans) - 1}\ue001"

    for pattern in _INLINE_PATTERNS:
        line = pattern.sub(keep, line)
    return line, spans


def unmask(line: str, spans: list[str]) -> str:
    while _SENTINEL.search(line):
        line = _SENTINEL.sub(lambda m: spans[int(m.group(1))], line)
    return line


def protected_spans(text: str, protect: Sequence[str] = ()) -> list[str]:
    """Every span safe mode must keep byte for byte (inline spans and whole blocks)."""
    lines = text.split("\n")
    blocks = _block_lines(lines, [re.compile(p) for p in protect])
    found = [lines[i] for i in sorted(blocks) if lines[i].strip()]
    for index, line in enumerate(lines):
        if index not in blocks:
            spans = mask(line)[1]
            found += [unmask(span, spans) for span in spans]
    return [span for span in found if span.strip()]


INSTRUCTION_WORDS = (
    "never",
    "not",
    "no",
    "don't",
    "do not",
    "must",
    "mustn't",
    "only",
    "always",
    "cannot",
    "can't",
    "should",
    "shouldn't",
    "won't",
    "avoid",
)
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z]+\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def check_rewrite(
    original: str,
    safe: str,
    rewrite: str,
    count: Callable[[str], int],
    protect: Sequence[str] = (),
) -> str | None:
    """Why ``rewrite`` must be rejected, or None when it is acceptable.

    Instruction words are counted against the safe version, which has already dropped
    repeated identical lines (a repeated rule is one rule).
    """
    if not rewrite.strip():
        return "the rewrite is empty"
    if count(rewrite) >= count(safe):
        return f"not shorter than safe mode ({count(rewrite)} >= {count(safe)} tokens)"
    for span in protected_spans(original, protect):
        if span.strip() not in rewrite:
            return f"drops a protected span: {span.strip()[:80]!r}"
    for kind, found in (("name", names), ("number", _NUMBER.findall)):
        missing = sorted(
            set(found(original))
            - set(found(rewrite))
            - set(_CAPITALISED.findall(rewrite) if kind == "name" else ())
        )
        if missing:
            return f"drops {kind}s: {', '.join(missing[:5])}"
    lost = _lost_instruction_words(safe, rewrite)
    if lost:
        return f"drops instruction words: {', '.join(lost)}"
    return None


def names(text: str) -> list[str]:
    """Capitalised words that do not open a sentence or a line: names, products, places."""
    found = []
    for sentence in re.split(r"(?<=[.!?:])\s+|\n", text):
        words = _CAPITALISED.findall(sentence)
        starts = sentence.lstrip("-*#>0123456789. \t`\"'(")
        found += [w for w in words if not starts.startswith(w)]
    return found


def instruction_counts(text: str) -> Counter[str]:
    lowered = text.lower()
    return Counter(
        {word: len(re.findall(rf"\b{re.escape(word)}\b", lowered)) for word in INSTRUCTION_WORDS}
    )


def _lost_instruction_words(original: str, rewrite: str) -> list[str]:
    before, after = instruction_counts(original), instruction_counts(rewrite)
    return [word for word in INSTRUCTION_WORDS if after[word] < before[word]]
