#!/usr/bin/env python3
"""Tidy the code to the house style (CONTRIBUTING.md): one statement per line, lines of at most 120 characters.

    python scripts/tidy.py            # rewrite in place
    python scripts/tidy.py --check    # list what it would change and what stays long; exit 1 if anything

It rewrites the code cells of every notebook under nbs/ (only their `source`; cells that are not Python, such as
IPython magics or `!` commands, are skipped and counted) and the Python files that nbdev does not export (tests/, api/,
bench/, scripts/, pipelines/, conftest.py). Run `nbdev-export && nbdev-clean` after it: the modules in mlops_nb/ are
written from the notebooks.

1. `a; b` becomes one statement per line; `if x: a; b` (any compound header with an inline body) becomes the header
   and an indented block. A trailing `;` (it hides a notebook cell's output) is kept.
2. Lines over 120 characters are wrapped where the meaning cannot change: a trailing comment that makes its line long
   moves above the line; long comments are wrapped; long code goes to black (only those lines: `--line-ranges`); a
   long string literal is split into adjacent literals (parenthesised where needed), which Python joins back into
   the same constant; long lines inside a docstring are re-wrapped. What remains (a URL, a word longer than the line,
   a multi-line string that is data) is listed; mark literal tables with `# noqa: E501`.

Safety: a rewritten cell or file must parse to the same AST (docstrings compared with their whitespace normalised) and
keep the same comments (compared word by word); otherwise it is not written and is reported.
"""
import argparse, ast, io, json, re, sys, textwrap, tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 120
PY_PLACES = ["tests", "api", "bench", "scripts", "pipelines", "conftest.py"]  # Python that nbdev does not export
HEADERS = {"if", "elif", "else", "for", "while", "try", "except", "finally", "with", "def", "class", "async"}
OPEN, CLOSE = "([{", ")]}"
NOQA = re.compile(r"#\s*noqa\b")
SKIP_COMMENT = re.compile(r"#\s*(\||!|noqa|type:|fmt:|ruff:|pragma)")


class Refused(Exception):
    "A rewrite that would change the meaning or lose a comment."


# ---------------------------------------------------------------------------------------------------------------- #
# helpers

def _tokens(src):
    return list(tokenize.generate_tokens(io.StringIO(src).readline))


def _offsets(src):
    "Offset of each line's start (1-based line numbers: index 0 unused)."
    offs, n = [0, 0], 0
    for line in src.splitlines(keepends=True):
        n += len(line)
        offs.append(n)
    return offs


def _logical_lines(toks):
    "Token lists of each logical line, without INDENT/DEDENT/NL/NEWLINE/ENDMARKER."
    cur = []
    for t in toks:
        if t.type == tokenize.NL and all(c.type == tokenize.COMMENT for c in cur):
            cur = []  # a line of comments only
            continue
        if t.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.ENDMARKER, tokenize.ENCODING):
            continue
        if t.type == tokenize.NEWLINE:
            if cur:
                yield cur
            cur = []
        else:
            cur.append(t)
    if cur:
        yield cur


def _docstring_nodes(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                yield first.value


def _meaning(src):
    "The AST of `src` as text, with docstrings' whitespace normalised."
    tree = ast.parse(src)
    for c in _docstring_nodes(tree):
        c.value = " ".join(c.value.split())
    return ast.dump(tree)


def _comment_words(src):
    "The words of the comments, without the `noqa: E501` marks this tool adds."
    texts = (re.sub(r"\bnoqa: E501\b", "", t.string).lstrip("#").strip() for t in _tokens(src)
             if t.type == tokenize.COMMENT)
    return " ".join(texts).split()


def check_same(old, new):
    "Raise Refused unless `new` means what `old` does and keeps its comments."
    try:
        same = _meaning(old) == _meaning(new)
    except SyntaxError as e:
        raise Refused(f"the rewrite does not parse ({e})") from None
    if not same:
        raise Refused("the rewrite changes the AST")
    if _comment_words(old) != _comment_words(new):
        raise Refused("the rewrite changes the comments")


# ---------------------------------------------------------------------------------------------------------------- #
# 1. semicolons

def split_semicolons(src, long_one_liners=False):
    """Each `;`-joined statement on its own line; a compound header's inline body becomes an indented block.

    With `long_one_liners`, also a one-line compound statement (`if x: y`) whose line is over the limit."""
    toks, offs = _tokens(src), _offsets(src)
    at = lambda pos: offs[pos[0]] + pos[1]
    edits = []
    for line in _logical_lines(toks):
        depth, semis, colon, lambdas = 0, [], None, 0
        code = [t for t in line if t.type != tokenize.COMMENT]
        for i, t in enumerate(code):
            if t.type == tokenize.OP and t.string in OPEN: depth += 1
            elif t.type == tokenize.OP and t.string in CLOSE: depth -= 1
            elif depth == 0 and t.type == tokenize.NAME and t.string == "lambda": lambdas += 1
            elif depth == 0 and t.type == tokenize.OP and t.string == ":" and colon is None and not semis:
                if lambdas: lambdas -= 1
                else: colon = i
            elif depth == 0 and t.type == tokenize.OP and t.string == ";": semis.append(i)
        header = (code[0].type == tokenize.NAME and code[0].string in HEADERS and colon is not None
                  and colon + 1 < (semis or [len(code)])[0] and code[colon + 1].start[0] == code[colon].start[0])
        long_line = len(src[offs[line[0].start[0]]:].split("\n", 1)[0]) > LIMIT
        if not semis or semis == [len(code) - 1]:  # none, or only a trailing `;`
            if not (long_one_liners and header and long_line): continue
        start = colon + 1 if header else 0
        segs, cur = [], []
        for i in range(start, len(code)):
            if i in semis:
                segs.append(cur)
                cur = []
            else:
                cur.append(code[i])
        segs.append(cur)
        trailing_semi = not segs[-1]
        segs = [s for s in segs if s]
        texts = [src[at(s[0].start):at(s[-1].end)] for s in segs]
        if trailing_semi:
            texts[-1] += ";"
        first = line[0]
        indent = src[offs[first.start[0]]:at(first.start)]
        comment = line[-1] if line[-1].type == tokenize.COMMENT and line[-1].start > code[-1].end else None
        if header:
            body = indent + "    "
            new = src[at(first.start):at(code[colon].end)] + "\n" + body + ("\n" + body).join(texts)
        else:
            new = ("\n" + indent).join(texts)
        end = code[-1].end
        if comment:
            new += "  " + comment.string
            end = comment.end
        edits.append((at(first.start), at(end), new))
    for a, b, new in reversed(edits):
        src = src[:a] + new + src[b:]
    return src, len(edits)


# ---------------------------------------------------------------------------------------------------------------- #
# 2. long lines

def _wrap_comment(text, indent):
    "A comment's text as comment lines of at most LIMIT characters at `indent` (a word too long stays whole)."
    m = re.match(r"#+\s?", text)
    prefix = m.group(0) if m else "# "
    body = text[len(prefix):]
    width = max(LIMIT - len(indent) - len(prefix), 40)
    lines = textwrap.wrap(body, width, break_long_words=False, break_on_hyphens=False) or [""]
    return [indent + prefix + line for line in lines]


LIST_ITEM = re.compile(r"\s*([-*]|\d+[.)])\s")


def wrap_comments(src):
    """Long full-line comments wrapped (what overflows joins the next comment line of the same paragraph); a trailing
    comment that makes its line long moved above the line.

    A comment on a `def`/`class` line stays (nbdev's docments reads a parameter's comment there)."""
    lines = src.split("\n")
    toks = _tokens(src)
    out = {}  # line number -> replacement lines
    logical_first, full = {}, {}
    ll_end, ll_tokens = {}, {}
    for ll in _logical_lines(toks):
        ll_end[ll[0].start], ll_tokens[ll[0].start] = ll[-1].end[0], ll
        for r in range(ll[0].start[0], ll[-1].end[0] + 1):
            logical_first[r] = ll[0]
    for t in toks:
        if t.type == tokenize.COMMENT and not lines[t.start[0] - 1][:t.start[1]].strip():
            full[t.start[0]] = t
    for t in toks:
        if t.type != tokenize.COMMENT: continue
        r, c = t.start
        line = lines[r - 1]
        if len(line) <= LIMIT or SKIP_COMMENT.match(t.string) or r in full: continue
        before = line[:c]
        indent = re.match(r"[ \t]*", line).group(0)
        first = logical_first.get(r)
        if first is not None and first.string in ("def", "async") and first.start[0] == r and (
                ll_end[first.start] > r or any(u.string == "->" for u in ll_tokens[first.start])):
            # the first parameter's (or the result's) comment for nbdev's docments: above `def` it would not be
            continue
        if len(before.rstrip()) > LIMIT: continue  # the code is long too: wrapped first
        if r > 1 and lines[r - 2].rstrip().endswith("\\"): continue
        out[r] = _wrap_comment(t.string, indent) + [before.rstrip()]
    carry = None  # (row, words) that overflowed into the next comment line
    for r in sorted(full):
        t = full[r]
        text = t.string
        if carry and carry[0] == r:
            m = re.match(r"#+\s?", text)
            text = m.group(0) + carry[1] + " " + text[m.end():]
        carry = None
        indent = lines[r - 1][:t.start[1]]
        if len(indent) + len(text) <= LIMIT or SKIP_COMMENT.match(text):
            if text != t.string: out[r] = [indent + text]
            continue
        wrapped = _wrap_comment(text, indent)
        nxt = full.get(r + 1)
        m = re.match(r"#+\s?", text)
        if (len(wrapped) > 1 and nxt is not None and nxt.start[1] == t.start[1] and nxt.string.startswith(m.group(0))
                and not SKIP_COMMENT.match(nxt.string) and not LIST_ITEM.match(nxt.string[len(m.group(0)):])
                and nxt.string[len(m.group(0)):].strip()):
            carry = (r + 1, " ".join(w[len(indent) + len(m.group(0)):] for w in wrapped[1:]))
            wrapped = wrapped[:1]
        out[r] = wrapped
    if not out:
        return src
    new = []
    for i, line in enumerate(lines, 1):
        new.extend(out.get(i, [line]))
    return "\n".join(new)


def _split_points(body, fstring):
    "Where a string literal's body may be cut: after a space outside f-string braces, or at a placeholder's edge."
    pts, depth, i = [], 0, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            i += 2
            continue
        if fstring and ch in "{}":
            if body[i:i + 2] in ("{{", "}}"):
                i += 2
                continue
            if ch == "{" and depth == 0 and i: pts.append(i)
            depth += 1 if ch == "{" else -1
            if ch == "}" and depth == 0: pts.append(i + 1)
        elif ch == " " and depth == 0 and i + 1 < len(body) and body[i + 1] != " ":
            pts.append(i + 1)
        i += 1
    return sorted(set(pts))


def _split_literal(text, first_room, room, balance=True):
    "A one-line string literal as adjacent literals, the first at most `first_room` long, the others `room`; or None."
    m = re.match(r"([A-Za-z]*)('|\")", text)
    if not m or text[len(m.group(1)):].startswith(("'''", '"""')):
        return None
    prefix, q = m.groups()
    if "b" in prefix.lower(): return None
    body = text[len(prefix) + 1:-1]
    fstring = "f" in prefix.lower()
    pts = _split_points(body, fstring)

    def lit(part):
        p = prefix
        if fstring and "{" not in part and "}" not in part:
            p = p.replace("f", "").replace("F", "")
        return p + q + part + q

    def greedy(first, rest):
        pieces, start, limit = [], 0, first
        while len(lit(body[start:])) > limit:
            fit = [p for p in pts if p > start and len(lit(body[start:p])) <= limit]
            if not fit: return None
            pieces.append(lit(body[start:fit[-1]]))
            start, limit = fit[-1], rest
        return pieces + [lit(body[start:])]

    pieces = greedy(first_room, room)
    if not pieces or len(pieces) < 2:
        return None
    if not balance or len(pieces[-1]) > 40:
        return pieces
    even = -(-len(body) // len(pieces)) + 12  # pieces of even length read better than a long one and a stub
    balanced = greedy(min(first_room, even), min(room, even))
    return balanced if balanced and len(balanced) == len(pieces) else pieces


def _parse_literal(text):
    "(prefix, quote, body) of a one-line string literal, or None (triple-quoted, bytes)."
    m = re.match(r"([A-Za-z]*)('|\")", text)
    if not m or text[len(m.group(1)):].startswith(("\'\'\'", '"""')) or "b" in m.group(1).lower():
        return None
    return m.group(1), m.group(2), text[m.end():-1]


def _join_literals(a, b):
    "One literal meaning what the adjacent literals `a` `b` mean, or None when they do not combine."
    pa, pb = _parse_literal(a), _parse_literal(b)
    if not pa or not pb or pa[1] != pb[1]: return None
    plain = lambda p: p.lower().replace("f", "").replace("u", "")
    if plain(pa[0]) != plain(pb[0]): return None
    fa, fb = "f" in pa[0].lower(), "f" in pb[0].lower()
    esc = lambda body, f: body if f or not (fa or fb) else body.replace("{", "{{").replace("}", "}}")
    prefix = plain(pa[0]) + ("f" if fa or fb else "")
    return prefix + pa[1] + esc(pa[2], fa) + esc(pb[2], fb) + pa[1]


def _split_once(src):
    "Split the first one-line string literal that crosses the limit (see `split_strings`); (src, changed)."
    toks = _tokens(src)
    lines = src.split("\n")
    offs = _offsets(src)
    depth = 0
    sig = [t for t in toks if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)]
    for i, t in enumerate(sig):
        if t.type == tokenize.OP and t.string in OPEN: depth += 1
        elif t.type == tokenize.OP and t.string in CLOSE: depth -= 1
        if t.type != tokenize.STRING or t.start[0] != t.end[0] or t.end[1] <= LIMIT: continue
        line = lines[t.start[0] - 1]
        if NOQA.search(line): continue
        rest = line[t.end[1]:].split("  #")[0].rstrip()
        col = t.start[1]
        prev, nxt = sig[i - 1] if i else None, sig[i + 1] if i + 1 < len(sig) else None
        span = (offs[t.start[0]] + col, offs[t.end[0]] + t.end[1])
        if depth > 0:
            follows = (nxt is not None and nxt.type == tokenize.STRING and nxt.start == (t.start[0] + 1, col)
                       and nxt.start[0] == nxt.end[0] and not t.string[:-1].endswith("\\n"))
            pieces = _split_literal(t.string, LIMIT - col, LIMIT - col - (0 if follows else len(rest)), not follows)
            if not pieces: continue
            if follows:  # what overflows joins the next literal of the run (which may then overflow in turn)
                head = _parse_literal(pieces[0])[2]
                p, q, body = _parse_literal(t.string)
                tail = _join_literals(p + q + body[len(head):] + q, nxt.string)
                if tail is not None:
                    tail_lit = _parse_literal(tail)
                    if "f" in tail_lit[0] and "{" not in tail_lit[2] and "}" not in tail_lit[2]:
                        tail = tail.replace("f", "", 1) if tail.startswith("f") else tail
                    new = pieces[0] + "\n" + " " * col + tail
                    span = (span[0], offs[nxt.end[0]] + nxt.end[1])
                    return src[:span[0]] + new + src[span[1]:], True
                pieces = _split_literal(t.string, LIMIT - col, LIMIT - col - len(rest))
                if not pieces: continue
            new = ("\n" + " " * col).join(pieces)
        else:
            if prev is not None and prev.type == tokenize.STRING or nxt is not None and nxt.type == tokenize.STRING:
                continue
            if nxt is not None and nxt.type == tokenize.OP and nxt.string in ".([": continue
            pieces = _split_literal(t.string, LIMIT - col - 1, LIMIT - col - 2 - len(rest))
            if not pieces: continue
            new = "(" + ("\n" + " " * (col + 1)).join(pieces) + ")"
        return src[:span[0]] + new + src[span[1]:], True
    return src, False


def split_strings(src):
    """Split each one-line string literal that crosses the limit into adjacent literals (parenthesised at depth 0),
    which Python joins back into the same constant; inside a run of literals, what overflows joins the next one."""
    for _ in range(300):
        src, changed = _split_once(src)
        if not changed: break
    return src


def wrap_docstrings(src):
    "Re-wrap the long lines inside multi-line docstrings (a list item's continuation indented under its text)."
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src
    lines = src.split("\n")
    spans = [(c.lineno, c.end_lineno) for c in _docstring_nodes(tree)
             if re.match(r"\s*[rRuU]?(\"\"\"|\'\'\')", lines[c.lineno - 1])]
    changed = False
    for a, b in reversed(spans):
        block = []
        for r in range(a, b + 1):
            line = lines[r - 1]
            if len(line) <= LIMIT or r == b and not line.rstrip().endswith(('"""', "'''")):
                block.append(line)
                continue
            indent = re.match(r"[ \t]*", line).group(0)
            if r == a:  # the opening line: continue at the statement's indentation
                wrapped = textwrap.wrap(line[len(indent):], LIMIT - len(indent), break_long_words=False,
                                        break_on_hyphens=False)
                block.extend(indent + w for w in wrapped)
                changed = True
                continue
            m = re.match(r"([-*] |\d+\. )", line[len(indent):])
            hang = indent + " " * len(m.group(0)) if m else indent
            wrapped = textwrap.wrap(line[len(indent):], LIMIT - len(indent), break_long_words=False,
                                    break_on_hyphens=False, subsequent_indent=hang[len(indent):])
            block.extend(indent + w for w in wrapped)
            changed = True
        lines[a - 1:b] = block
    return "\n".join(lines) if changed else src


def mark_data(src):
    """`# noqa: E501` on what is data: a multi-line string with a line still over the limit (at the line that closes
    it), a string literal with no space to split at."""
    lines = src.split("\n")
    rows = set()
    comment_rows = {t.start[0] for t in _tokens(src) if t.type == tokenize.COMMENT}
    for t in _tokens(src):
        if t.type != tokenize.STRING: continue
        if t.start[0] != t.end[0]:
            if any(len(lines[r - 1]) > LIMIT for r in range(t.start[0], t.end[0] + 1)): rows.add(t.end[0])
        elif t.end[1] > LIMIT and " " not in t.string and len(t.string) > 40:
            rows.add(t.end[0])
    for r in sorted(rows):
        line = lines[r - 1]
        if NOQA.search(line) or r in comment_rows or line.rstrip().endswith("\\"): continue
        lines[r - 1] = line.rstrip() + "  # noqa: E501"
    return "\n".join(lines)


def _long_code_lines(src):
    "Line numbers whose code (without a trailing comment, outside multi-line strings) is longer than the limit."
    lines = src.split("\n")
    inside, comment_col = set(), {}
    for t in _tokens(src):
        if t.type == tokenize.STRING and t.start[0] != t.end[0]:
            inside.update(range(t.start[0], t.end[0] + 1))
        if t.type == tokenize.COMMENT:
            comment_col[t.start[0]] = t.start[1]
    out = []
    for r, line in enumerate(lines, 1):
        if r in inside or NOQA.search(line): continue
        code = line[:comment_col.get(r, len(line))].rstrip()
        if len(code) > LIMIT and code.strip():
            out.append(r)
    return out


BREAK_BEFORE = {"and", "or", "if", "else", "for"}
MAX_HANG = 80  # a continuation aligned further right than this is left to black


def _fill_one(src, rows):
    "Break the first long code line in `rows` once, inside brackets (after a comma, or before and/or/if/else/for)."
    toks = _tokens(src)
    lines = src.split("\n")
    for ll in _logical_lines(toks):
        todo = rows.intersection(range(ll[0].start[0], ll[-1].end[0] + 1))
        if not todo: continue
        r = min(todo)
        span = set(range(ll[0].start[0], ll[-1].end[0] + 1))
        stack, cands = [], []
        for i, t in enumerate(ll):
            if t.type == tokenize.OP and t.string in OPEN:
                stack.append(t)
            elif t.type == tokenize.OP and t.string in CLOSE:
                if stack: stack.pop()
            if t.start[0] != r or not stack or t.type == tokenize.COMMENT: continue
            nxt = ll[i + 1] if i + 1 < len(ll) else None
            if t.type == tokenize.OP and t.string == ",":
                cut = t.end[1]
                if nxt is None or nxt.start[0] != r or nxt.type == tokenize.COMMENT: continue
            elif t.type == tokenize.NAME and t.string in BREAK_BEFORE and i and ll[i - 1].start[0] == r:
                cut = t.start[1]
            else:
                continue
            if cut > LIMIT: continue
            b = stack[-1]
            after = [u for u in ll if u.start > b.start][:1]
            indent_r = len(lines[r - 1]) - len(lines[r - 1].lstrip())
            if b.start[0] == r:
                col = b.end[1]  # aligned after the bracket
            elif after and after[0].start[0] == b.start[0]:
                col = min(indent_r, after[0].start[1])  # as the statement's lines already are
            else:
                col = indent_r  # a hanging indent
            cands.append((len(stack), -cut, cut, col))
        line = lines[r - 1]
        for _, _, cut, col in sorted(cands):
            head, tail = line[:cut].rstrip(), line[cut:].lstrip()
            if col >= cut or col > MAX_HANG or not tail: continue
            lines[r - 1:r] = [head, " " * col + tail]
            return "\n".join(lines), True, span
        return src, False, span
    return src, False, set()


def fill_lines(src):
    """Wrap long code lines inside their brackets, continuation aligned after the opening bracket (the house layout).

    A statement that cannot be brought under the limit this way is left as it was (for black)."""
    failed, snap = set(), None  # snap: (first line of the statement being wrapped, its source before)
    for _ in range(500):
        rows = set(_long_code_lines(src)) - failed
        if not rows: break
        r = min(rows)
        new, ok, span = _fill_one(src, {r})
        if ok:
            try:
                ast.parse(new)
            except SyntaxError:
                ok = False
        if not ok:
            if snap and snap[0] == min(span, default=None):
                src, span = snap[1], span | snap[2]
            failed |= span or {r}
            snap = None
            continue
        if not snap or snap[0] != min(span):
            snap = (min(span), src, span)
        src = new
    return src


def _black(snippet, width):
    import black
    mode = black.Mode(line_length=width, string_normalization=False, magic_trailing_comma=False)
    return black.format_str(snippet, mode=mode)


def black_lines(src):
    """Black on each statement with a long code line (line length 120, quotes and trailing commas as written).

    Each statement is formatted alone (black's own `--line-ranges` mangles one-line compound statements); a compound
    statement's header is formatted with a `pass` body, which is dropped again."""
    rows = set(_long_code_lines(src))
    if not rows:
        return src
    toks, offs = _tokens(src), _offsets(src)
    at = lambda pos: offs[pos[0]] + pos[1]
    multiline = [t for t in toks if t.type == tokenize.STRING and t.start[0] != t.end[0]]
    edits = []
    for ll in _logical_lines(toks):
        first, last = ll[0], ll[-1]
        if not rows.intersection(range(first.start[0], last.end[0] + 1)): continue
        if any(first.start[0] <= t.start[0] <= last.end[0] for t in multiline): continue
        if first.string in ("elif", "else", "except", "finally", "@", "case"): continue
        indent = src[offs[first.start[0]]:at(first.start)]
        if indent.strip(): continue
        text = src[at(first.start):at(last.end)]
        code = [t for t in ll if t.type != tokenize.COMMENT]
        header = first.string in HEADERS and code[-1].string == ":"
        snippet = text + ("\n    pass\n" if header else "\n")
        try:
            out = _black(snippet, LIMIT - len(indent))
        except Exception:
            continue
        out = out.rstrip("\n").split("\n")
        if header:
            if out[-1].strip() != "pass": continue
            out = out[:-1]
        new = ("\n").join((indent + line) if line else line for line in out)[len(indent):]
        if new != text:
            edits.append((at(first.start), at(last.end), new))
    for a, b, new in reversed(edits):
        src = src[:a] + new + src[b:]
    return src


def long_lines(src):
    "(line number, line) of each line over the limit that no `noqa` covers (a multi-line string's: on its last line)."
    lines = src.split("\n")
    covered = set()
    try:
        for t in _tokens(src):
            if t.type == tokenize.STRING and t.start[0] != t.end[0] and NOQA.search(lines[t.end[0] - 1]):
                covered.update(range(t.start[0], t.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass
    return [(r, line) for r, line in enumerate(lines, 1) if len(line) > LIMIT and not NOQA.search(line)
            and r not in covered]


def tidy(src):
    "The tidied source and the number of `;`-joined lines split."
    new, n = split_semicolons(src)
    for _ in range(3):
        before = new
        new = wrap_comments(new)
        new = split_semicolons(new, long_one_liners=True)[0]
        new = fill_lines(new)
        new = split_strings(new)
        new = fill_lines(new)
        new = black_lines(new)
        new = wrap_comments(new)
        new = split_strings(new)
        new = wrap_docstrings(new)
        if new == before: break
    new = mark_data(new)
    if new != src:
        check_same(src, new)
    return new, n


# ---------------------------------------------------------------------------------------------------------------- #
# files

def notebooks():
    return sorted(
        p
        for p in (ROOT / "nbs").rglob("*.ipynb")
        if not any(part.startswith((".", "_")) for part in p.parts[len(ROOT.parts) :])
    )


def py_files():
    out = []
    for place in PY_PLACES:
        p = ROOT/place
        if p.is_file(): out.append(p)
        elif p.is_dir():
            out += [
                f
                for f in p.rglob("*.py")
                if not any(x.endswith("venv") or x.startswith(".") for x in f.relative_to(ROOT).parts)
            ]
    return sorted(out)


def _parses(src):
    try:
        ast.parse(src)
        return True
    except SyntaxError:
        return False


def write_nb(nb):
    "The notebook as nbdev-clean writes it."
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--check", action="store_true", help="change nothing; list what would change and exit 1 if anything"
    )
    ap.add_argument("paths", nargs="*", help="only these notebooks or files (default: all)")
    a = ap.parse_args(argv)
    try:
        import black  # noqa: F401
    except ImportError:
        sys.exit("tidy: black is needed to wrap long code lines: pip install black (into .venv)")
    targets = [Path(p).resolve() for p in a.paths] if a.paths else notebooks() + py_files()
    changed, refused, skipped, semis, remaining = [], [], 0, 0, []
    for path in targets:
        rel = path.relative_to(ROOT)
        text = path.read_text()
        if path.suffix == ".ipynb":
            nb = json.loads(text)
            if write_nb(nb) != text:
                print(f"tidy: {rel}: not in nbdev-clean's format (run nbdev-clean first); left alone", file=sys.stderr)
                continue
            n_changed = 0
            for i, cell in enumerate(nb["cells"]):
                if cell["cell_type"] != "code": continue
                src = "".join(cell["source"])
                if not _parses(src):
                    skipped += 1
                    continue
                try:
                    new, n = tidy(src)
                except (Refused, Exception) as e:
                    refused.append(f"{rel} cell {i} ({cell.get('id')}): {e}")
                    continue
                remaining += [f"{rel} cell {i}:{r}: {len(l)}" for r, l in long_lines(new)]
                if new != src:
                    semis += n
                    n_changed += 1
                    cell["source"] = new.splitlines(keepends=True)
            if n_changed:
                changed.append(f"{rel}: {n_changed} cell(s)")
                if not a.check: path.write_text(write_nb(nb))
        else:
            try:
                new, n = tidy(text)
            except (Refused, Exception) as e:
                refused.append(f"{rel}: {e}")
                continue
            remaining += [f"{rel}:{r}: {len(l)}" for r, l in long_lines(new)]
            if new != text:
                semis += n
                changed.append(str(rel))
                if not a.check: path.write_text(new)
    verb = "would change" if a.check else "changed"
    for c in changed: print(f"{verb}: {c}")
    for r in refused: print(f"refused: {r}", file=sys.stderr)
    for r in remaining: print(f"still long: {r}")
    print(f"tidy: {len(changed)} file(s) {verb}, {semis} semicolon line(s) split, {len(remaining)} line(s) still over "
          f"{LIMIT} characters, {skipped} notebook cell(s) skipped (not Python: magics or shell lines), "
          f"{len(refused)} refused", file=sys.stderr)
    return 1 if (a.check and (changed or remaining)) or refused else 0


if __name__ == "__main__":
    sys.exit(main())
