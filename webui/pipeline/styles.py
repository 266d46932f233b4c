"""Prompt styles: AUTOMATIC1111's ``styles.csv`` and its merge rules.

The file has a header ``name,prompt,negative_prompt`` (A1111's older ``name,text`` is read too), one style per
row, UTF-8 (a byte-order mark is allowed, as A1111 writes one). Applying a style to a prompt
(A1111's ``merge_prompts``): a style prompt holding ``{prompt}`` gets the user's prompt in its place; any
other is appended after ``", "`` (empty parts dropped). Several styles apply in order, each to the result of
the ones before; the negative prompt likewise with the styles' negative prompts.

Styles are applied before a request is queued, so the request, and therefore the infotext, holds the final
prompt (as in A1111): an image reproduces without the styles file.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("name", "prompt", "negative_prompt")
PROMPT_PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


@dataclass(frozen=True)
class StyleProblem:
    """A row of the file that could not be read; ``line`` counts from 1, the header being line 1."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class StyleFile:
    """What a styles file holds: its styles in file order, and the rows that were skipped."""

    path: Path
    styles: tuple[PromptStyle, ...] = ()
    problems: tuple[StyleProblem, ...] = ()

    @property
    def names(self) -> list[str]:
        return [style.name for style in self.styles]

    def get(self, names: Sequence[str]) -> list[PromptStyle]:
        """The styles called ``names``, in that order.

        Raises:
            KeyError: naming every unknown name.
        """
        by_name = {style.name: style for style in self.styles}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise KeyError(f"unknown style(s): {', '.join(map(repr, unknown))} (known: {', '.join(by_name) or 'none'})")
        return [by_name[name] for name in names]


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """One style applied to one prompt (A1111's rule, see the module docstring)."""
    if PROMPT_PLACEHOLDER in style_prompt:
        return style_prompt.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: Sequence[PromptStyle]) -> tuple[str, str]:
    """``(prompt, negative_prompt)`` with ``styles`` applied in order."""
    for style in styles:
        prompt = merge_prompts(style.prompt, prompt)
        negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def default_styles_path(models_yaml: Path | None) -> Path:
    """``styles.csv`` next to ``models.yaml`` (the current folder when there is none)."""
    return (models_yaml.parent if models_yaml is not None else Path(".")) / "styles.csv"


def load_styles(path: Path) -> StyleFile:
    """Read ``path``; a missing file holds no styles. A bad row is reported with its line number and skipped,
    the rest still load (a later row with the same name replaces an earlier one, as in A1111)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return StyleFile(path)
    except (OSError, UnicodeDecodeError) as err:
        return StyleFile(path, problems=(StyleProblem(1, f"cannot be read: {err}"),))
    return parse_styles(text, path)


def parse_styles(text: str, path: Path = Path("styles.csv")) -> StyleFile:
    """The styles of a CSV text (see :func:`load_styles`)."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), skipinitialspace=True)
    problems: list[StyleProblem] = []
    styles: dict[str, PromptStyle] = {}
    try:
        header = next(reader, None)
    except csv.Error as err:
        return StyleFile(path, problems=(StyleProblem(1, f"not CSV: {err}"),))
    if header is None:
        return StyleFile(path)
    columns = [name.strip() for name in header]
    prompt_column = "prompt" if "prompt" in columns else "text" if "text" in columns else None
    if "name" not in columns or prompt_column is None:
        message = f"the header must name the columns {', '.join(FIELDS)}, got {', '.join(columns)!r}"
        return StyleFile(path, problems=(StyleProblem(1, message),))
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            problems.append(StyleProblem(line, f"not CSV: {err}"))
            break  # the csv module cannot resynchronise after a broken quote: the rest is unreadable
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(columns):
            problems.append(StyleProblem(line, f"{len(row)} fields, the header has {len(columns)} (quote commas)"))
            continue
        values = dict(zip(columns, row, strict=False))
        name = values.get("name", "").strip()
        if not name:
            problems.append(StyleProblem(line, "the style has no name"))
            continue
        styles[name] = PromptStyle(name, values.get(prompt_column, ""), values.get("negative_prompt", ""))
    return StyleFile(path, tuple(styles.values()), tuple(problems))


def save_style(path: Path, style: PromptStyle) -> StyleFile:
    """Add ``style`` to the file (replacing one of the same name) and return the file as now saved.

    Written as A1111 writes it (UTF-8 with BOM, header ``name,prompt,negative_prompt``); the old file is kept
    as ``styles.csv.bak``; the new one replaces it atomically, so a crash never leaves half a file.
    """
    if not style.name.strip():
        raise ValueError("a style needs a name")
    current = load_styles(path)
    if current.problems:  # rewriting would drop the rows that could not be read: the user fixes them first
        raise ValueError(f"{path} has rows that cannot be read ({current.problems[0]}); fix them first")
    styles = {s.name: s for s in current.styles}
    styles[style.name] = style
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for s in styles.values():
        writer.writerow((s.name, s.prompt, s.negative_prompt))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        backup.write_bytes(path.read_bytes())
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(buffer.getvalue(), encoding="utf-8-sig", newline="")
    os.replace(temporary, path)
    return load_styles(path)
