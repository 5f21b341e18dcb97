"""PowerShell syntax checks without PowerShell: tree-sitter's PowerShell grammar.

pwsh is not in Debian's repositories, so the rendered ``Start-VLLM.ps1`` and deploy's
``host.ps1`` are parsed instead of run. A parse finds what breaks a script before it runs (an
unbalanced quote or brace, a value that escaped its quoting), not what it does when it runs.
"""

from __future__ import annotations

from functools import cache

from tree_sitter import Language, Node, Parser
from tree_sitter_powershell import language

# PowerShell's tokenizer reads these as ' and " (and the dashes as -); the grammar does not, so
# they are mapped before parsing: a value whose curly quote escaped its string is then seen.
_AS_POWERSHELL_READS = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
    }
)


@cache
def _parser() -> Parser:
    return Parser(Language(language()))


def as_powershell_reads(source: str) -> str:
    """``source`` with the Unicode quotes and dashes PowerShell treats as ASCII ones replaced."""
    return source.translate(_AS_POWERSHELL_READS)


def verbatim_strings(source: str) -> list[str]:
    """The value of every single-quoted string in ``source``, as PowerShell reads them."""
    data = as_powershell_reads(source).encode()
    values: list[str] = []
    stack: list[Node] = [_parser().parse(data).root_node]
    while stack:
        node = stack.pop()
        if node.type == "verbatim_string_characters":
            text = data[node.start_byte : node.end_byte].decode()
            values.append(text[1:-1].replace("''", "'"))
        stack.extend(node.children)
    return values


def parse_errors(source: str) -> list[str]:
    """Every ERROR and MISSING node of ``source``'s parse tree as ``line:column: what``
    (1-based, with the text it covers); empty when the script parses cleanly.

    Curly quotes and dashes are read as PowerShell reads them (:func:`as_powershell_reads`).
    The grammar needs at least one statement: an empty script, or one of comments only, is
    reported as an error although PowerShell would run it.
    """
    data = as_powershell_reads(source).encode()
    tree = _parser().parse(data)
    problems: list[str] = []
    stack: list[Node] = [tree.root_node]
    while stack:
        node = stack.pop()
        if not node.has_error:
            continue
        row, column = node.start_point
        where = f"{row + 1}:{column + 1}"
        if node.is_missing:
            problems.append(f"{where}: missing {node.type}")
        elif node.is_error:
            text = data[node.start_byte : node.end_byte].decode(errors="replace")
            first_line = text.splitlines()[0] if text else ""
            problems.append(f"{where}: cannot parse {first_line[:60]!r}")
        stack.extend(reversed(node.children))  # in document order
    return problems
