"""PowerShell syntax checks without PowerShell: tree-sitter's PowerShell grammar.

pwsh is not in Debian's repositories, so the rendered ``Start-VLLM.ps1`` and deploy's
``host.ps1`` are parsed instead of run. A parse finds what breaks a script before it runs (an
unbalanced quote or brace, a value that escaped its quoting), not what it does when it runs.
"""

from __future__ import annotations

from functools import cache

from tree_sitter import Language, Node, Parser
from tree_sitter_powershell import language


@cache
def _parser() -> Parser:
    return Parser(Language(language()))


def parse_errors(source: str) -> list[str]:
    """Every ERROR and MISSING node of ``source``'s parse tree as ``line:column: what``
    (1-based, with the text it covers); empty when the script parses cleanly.

    The grammar needs at least one statement: an empty script, or one of comments only, is
    reported as an error although PowerShell would run it.
    """
    data = source.encode()
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
