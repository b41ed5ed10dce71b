"""xl domU config files read as xl reads them, every value's place kept.

The grammar is libxlu's (xl.cfg(5)): a setting is `name = value` or
`name += value` (appending to the setting before it), ended by a newline or
`;`; a value is a string in single or double quotes with C-like backslash
escapes, a number, or a list `[ ... ]` of values that may span lines and
end with a comma; `#` starts a comment that runs to the end of its line.
Names are lower case. Anything else is an error, and xl then refuses the
whole file. Each string keeps the byte range of its literal, quotes and all,
so that one disk entry can be rewritten and every other byte left as it was.
"""
import re
from collections import namedtuple

# A string: text unquoted; start and end: the literal's offsets in the file.
String = namedtuple("String", "text start end line quote")
Number = namedtuple("Number", "text line")
List = namedtuple("List", "items line")
Setting = namedtuple("Setting", "name op value line")

TOKENS = re.compile(r"""
    (?P<ident>[a-z][_0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<space>[ \t]+)
  | (?P<newline>\n|\#[^\n]*\n)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<symbol>\+=|[,\[\]=;])
""", re.X)
ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
           "v": "\v"}
Token = namedtuple("Token", "kind text start end line")


class Problem(Exception):
    def __init__(self, line, message):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


def read(data):
    """(settings, problems) of the config text data: every setting xl would
    read, in order, and a Problem for each error xl would report (any one
    makes xl refuse the file). Reading resumes after a bad line, as xl's
    does, so that every disk entry is seen."""
    settings, problems = [], []
    tokens = _Tokens(data, problems)
    while tokens.peek() is not None:
        try:
            setting = _statement(tokens)
        except Problem as e:
            problems.append(e)
            tokens.skip_line()
            continue
        if setting is not None:
            settings.append(setting)
    return settings, problems


def strings(value):
    """Every String in a value, lists flattened."""
    if isinstance(value, String):
        return [value]
    if isinstance(value, List):
        return [found for item in value.items for found in strings(item)]
    return []


def quoted(text, quote="'"):
    """text as an xl string literal in quote."""
    escaped = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f"{quote}{escaped}{quote}"


class _Tokens:
    def __init__(self, data, problems):
        self.list, line, pos = [], 1, 0
        while pos < len(data):
            found = TOKENS.match(data, pos)
            if found is None:  # xl: a lexical error, reported, then on after the word
                end = re.compile(r"[^ \t\n]*").match(data, pos + 1).end()
                problems.append(Problem(line, f"lexical error near `{data[pos:end]}'"))
                pos = end
                continue
            if found.lastgroup != "space":
                self.list.append(Token(found.lastgroup, found.group(), pos, found.end(), line))
            line += found.group().count("\n")
            pos = found.end()
        self.index = 0
        self.last_line = line

    def peek(self):
        return self.list[self.index] if self.index < len(self.list) else None

    def take(self):
        token = self.peek()
        self.index += 1
        return token

    def expect(self, *texts):
        token = self.take()
        if token is None:
            raise Problem(self.last_line, f"syntax error: the file ends where {' or '.join(texts)} belongs")
        if token.text not in texts and token.kind not in texts:
            raise Problem(token.line, f"syntax error near `{token.text.strip() or '<newline>'}'")
        return token

    def skip_newlines(self):
        while self.peek() is not None and self.peek().kind == "newline":
            self.index += 1

    def skip_line(self):
        while self.peek() is not None and self.take().kind != "newline":
            pass


def _statement(tokens):
    first = tokens.take()
    if first.kind == "newline" or first.text == ";":
        return None
    if first.kind != "ident":
        raise Problem(first.line, f"syntax error near `{first.text.strip()}'")
    op = tokens.expect("=", "+=").text
    value = _value(tokens)
    if tokens.peek() is not None:  # the end of the file ends a setting too
        tokens.expect("newline", ";")
    return Setting(first.text, op, value, first.line)


def _value(tokens):
    token = tokens.expect("string", "number", "[")
    if token.kind == "string":
        return String(_unquote(token), token.start, token.end, token.line, token.text[0])
    if token.kind == "number":
        return Number(token.text, token.line)
    items = []
    tokens.skip_newlines()
    while tokens.peek() is not None and tokens.peek().text != "]":
        items.append(_value(tokens))
        tokens.skip_newlines()
        if tokens.peek() is not None and tokens.peek().text == ",":
            tokens.take()
            tokens.skip_newlines()
        elif tokens.peek() is not None and tokens.peek().text != "]":
            raise Problem(tokens.peek().line, f"syntax error near `{tokens.peek().text.strip()}'")
    tokens.expect("]")
    return List(items, token.line)


def _unquote(token):
    body, out, i = token.text[1:-1], [], 0
    while i < len(body):
        if body[i] != "\\":
            out.append(body[i])
            i += 1
            continue
        escape = body[i + 1]
        i += 2
        if escape in ESCAPES:
            out.append(ESCAPES[escape])
        elif escape in "01234567" and len(re.match(r"[0-9]{0,3}", body[i:i + 3]).group()) >= 2:
            # xl's octal escapes read decimal digits and produce no character
            i += len(re.match(r"[0-9]*", body[i:i + 3]).group())
        else:  # xl cannot read \x escapes at all, nor an octal one with fewer than 3 digits
            raise Problem(token.line, f"invalid escape `\\{escape}' in quoted string")
    return "".join(out)
