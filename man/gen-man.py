#!/usr/bin/env python3
"""Generate keymutex's section-3 man pages from the public headers.

The headers are the one source: every page is built from the doc comment
above a declaration in include/keymutex.h (functions) or
include/keymutex_scoped.h (macros), and its SYNOPSIS quotes the declarations
themselves, so the pages cannot drift from the header documentation.

  * A declaration with a kernel-doc block (``/** name - summary ...``) gets a
    page of its own: NAME from the first line, @params as a list,
    paragraphs starting with "Returns" under RETURN VALUE, the rest under
    DESCRIPTION.
  * The shorthands (km_lock, km_trylock, ...) are documented on the page of
    the function they abbreviate (ALIASES below) and get a ``.so`` page.
  * A function with only a plain comment above it (km_version) gets a page
    built from that comment.
  * keymutex.3 is the overview: the header's opening comment (the
    conventions) and a list of every page.

A public function that fits none of these is an error (exit status 1), so a
new function cannot ship without documentation.

Usage:
  gen-man.py --header H --scoped-header S --list
  gen-man.py --header H --scoped-header S --outdir DIR [--version V]

Needs nothing but python3.
SPDX-License-Identifier: MIT
"""

import argparse
import os
import re
import sys

# Functions documented on another function's page (one .so page each).
ALIASES = {
    'km_lock': 'km_acquire',
    'km_trylock': 'km_acquire',
    'km_timedlock': 'km_acquire',
    'km_lock_shared': 'km_acquire',
    'km_trylock_shared': 'km_acquire',
}

# Type and macro definitions quoted in a page's SYNOPSIS, by page.
SYNOPSIS_DEFS = {
    'km_create': ['struct km_options', 'KM_FIFO', 'KM_RECURSIVE', 'KM_ERRORCHECK',
                  'KM_MAX_HOLDERS', 'KM_MAX_WAITERS', 'KM_MAX_SHARDS'],
    'km_acquire': ['struct km_guard', 'KM_GUARD_INIT', 'KM_SHARED', 'KM_TRY',
                   'struct km_lock_options'],
    'km_acquire_all': ['struct km_key'],
    'km_acquire_async': ['km_ready_fn', 'struct km_request'],
    'km_stats': ['struct km_stats'],
    'km_query': ['km_visit_fn'],
}

MANUAL = 'keymutex manual'

# "Blocking: ...", "Memory ordering: ...": a labelled line starts a paragraph.
LABEL_RE = re.compile(r'^[A-Z][a-z]+( [a-z()]+){0,3}: ')

# Sentences of a "Returns" paragraph that describe behaviour, not results:
# they go back to DESCRIPTION.
NOT_RESULT_RE = re.compile(r'^(Does not|Never|Not ordered|Waits|Walks|Exact|Safe|'
                           r'Blocking|Memory ordering|Completions)\b')


class Doc:
    """One documented declaration."""

    def __init__(self, name, decl, header, kind):
        self.name = name
        self.decl = decl          # the declaration text, one line
        self.header = header      # 'keymutex.h' or 'keymutex_scoped.h'
        self.kind = kind          # 'function' or 'macro'
        self.summary = ''
        self.params = []          # [(name, text)]
        self.paras = []           # [('text'|'code', text)]
        self.comment = ''         # plain one-paragraph comment (no kernel-doc)
        self.section = None       # the header section (banner comment) it is in


def fail(msg):
    sys.stderr.write('gen-man: %s\n' % msg)
    sys.exit(1)


def strip_comment_lines(block):
    """Lines of a /* ... */ block without the comment markers."""
    out = []
    for raw in block:
        s = raw.rstrip()
        s = re.sub(r'^\s*/\*\*?', '', s)
        s = re.sub(r'\*/\s*$', '', s)
        s = re.sub(r'^\s*\* ?', '', s) if re.match(r'^\s*\*', s) else s
        out.append(s.rstrip())
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    return out


def split_sentence(text):
    m = re.search(r'\.\s+(?=[A-Z0-9(@-])', text)
    if not m:
        return text.rstrip('.'), ''
    return text[:m.start()], text[m.end():]


def parse_kdoc(doc, lines):
    first = lines[0]
    m = re.match(r'^(\w+)\s+-\s+(.*)$', first)
    if not m:
        fail('bad kernel-doc first line: %r' % first)
    if m.group(1) != doc.name:
        fail('kernel-doc block %s documents %s' % (m.group(1), doc.name))
    head = [m.group(2)]
    i = 1
    # The first paragraph runs until a blank line or an @param.
    while i < len(lines) and lines[i].strip() and not lines[i].startswith('@'):
        if lines[i].startswith('Returns'):
            break
        head.append(lines[i].strip())
        i += 1
    summary, rest = split_sentence(' '.join(head))
    doc.summary = summary.rstrip('.')
    if rest:
        doc.paras.append(('text', rest))
    cur = None            # current paragraph lines
    code = None           # current code block lines
    in_params = False

    def flush():
        nonlocal cur, code
        if cur:
            doc.paras.append(('text', ' '.join(cur)))
        if code:
            doc.paras.append(('code', '\n'.join(code)))
        cur = None
        code = None

    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            flush()
            in_params = False
            continue
        pm = re.match(r'^@(\w+):\s*(.*)$', line)
        if pm:
            flush()
            doc.params.append([pm.group(1), pm.group(2)])
            in_params = True
            continue
        if in_params and line.startswith(' '):
            doc.params[-1][1] += ' ' + line.strip()
            continue
        in_params = False
        if line.startswith('    '):
            if cur:
                flush()
            code = (code or []) + [line[4:]]
            continue
        if code:
            flush()
        if cur and (line.startswith('Returns') or LABEL_RE.match(line)):
            flush()
        cur = (cur or []) + [line.strip()]
    flush()


def read_decl(lines, i):
    """The declaration starting at lines[i]: (one-line text, next index)."""
    if lines[i].lstrip().startswith('#define'):
        text = lines[i].rstrip()
        # Keep the macro's name and parameters only.
        m = re.match(r'^\s*#define\s+(\w+(\([^)]*\))?)', text)
        j = i
        while lines[j].rstrip().endswith('\\'):
            j += 1
        return '#define ' + m.group(1), j + 1
    parts = []
    j = i
    while True:
        parts.append(lines[j].strip())
        if ';' in lines[j]:
            break
        j += 1
    text = ' '.join(parts)
    text = re.sub(r'\bKM_API\s+', '', text)
    text = re.sub(r'\s+', ' ', text).replace('( ', '(').replace(' )', ')')
    return text, j + 1


def decl_name(decl):
    m = re.match(r'^#define\s+(\w+)', decl)
    if m:
        return m.group(1)
    m = re.search(r'(\w+)\s*\(', decl)
    return m.group(1)


def parse_header(path, kind):
    """(docs in order, the header's opening comment lines, raw lines)."""
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    base = os.path.basename(path)
    docs = []
    opening = None
    pending_kdoc = None   # lines of a kernel-doc block waiting for its decl
    pending_plain = None  # (lines, end index) of the last plain comment
    section = None
    banner = False
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        s = line.strip()
        if s.startswith('/*'):
            start = i
            while '*/' not in lines[i]:
                i += 1
            block = lines[start:i + 1]
            i += 1
            text = strip_comment_lines(block)
            if opening is None:
                opening = text
                continue
            if s.startswith('/**'):
                pending_kdoc = text
                pending_plain = None
            elif len(text) == 1 and re.match(r'^-{10,}$', text[0].strip()):
                banner = not banner
                pending_plain = None
            elif banner:
                section = ' '.join(text).strip()
                pending_plain = None
            else:
                pending_plain = (text, i)
            continue
        is_func = kind == 'function' and re.match(r'^KM_API\b', s)
        is_macro = kind == 'macro' and re.match(r'^#define\s+KM_[A-Z_]*[A-Z]\b', s)
        if is_func or (is_macro and pending_kdoc):
            decl, nxt = read_decl(lines, i)
            doc = Doc(decl_name(decl), decl, base, kind)
            doc.section = section
            if pending_kdoc:
                parse_kdoc(doc, pending_kdoc)
            elif pending_plain and pending_plain[1] == i:
                doc.comment = ' '.join(l.strip() for l in pending_plain[0])
                summary, _ = split_sentence(doc.comment)
                summary = summary.rstrip('.')
                if re.match(r'^[A-Z][a-z]', summary):
                    summary = summary[0].lower() + summary[1:]
                doc.summary = summary
            docs.append(doc)
            pending_kdoc = None
            pending_plain = None
            i = nxt
            continue
        if s and not s.startswith('#'):
            # Any other code: a pending plain comment no longer applies.
            if pending_plain and pending_plain[1] != i:
                pending_plain = None
        i += 1
    return docs, opening or [], lines


def find_def(lines, what):
    """A type or macro definition from the header, verbatim."""
    if what.startswith('struct '):
        pat = re.compile(r'^' + re.escape(what) + r'\s*\{')
        for i, line in enumerate(lines):
            if pat.match(line):
                j = i
                while not lines[j].startswith('}'):
                    j += 1
                return '\n'.join(lines[i:j + 1])
    elif what.startswith('KM_'):
        pat = re.compile(r'^#define\s+' + re.escape(what) + r'\b')
        for line in lines:
            if pat.match(line):
                return line
    else:
        pat = re.compile(r'^typedef\b.*\b' + re.escape(what) + r'\b')
        for i, line in enumerate(lines):
            if pat.match(line):
                j = i
                while ';' not in lines[j]:
                    j += 1
                return '\n'.join(lines[i:j + 1])
    fail('definition of %s not found' % what)
    return ''


def wrap_decl(decl, width=78):
    if len(decl) <= width or '(' not in decl:
        return decl
    open_at = decl.index('(')
    head, args = decl[:open_at + 1], decl[open_at + 1:]
    out = []
    cur = head
    for arg in re.split(r'(?<=,) ', args):
        if len(cur) + len(arg) > width and cur.strip():
            out.append(cur.rstrip())
            cur = ' ' * (open_at + 1)
        cur += arg + ' '
    out.append(cur.rstrip())
    return '\n'.join(out)


class Roff:
    def __init__(self, names):
        self.names = names
        self.name_re = re.compile(r'\b(' + '|'.join(sorted(names, key=len, reverse=True))
                                  + r')\b(\(\))?') if names else None

    @staticmethod
    def esc(text):
        text = text.replace('\\', '\\e')
        return text

    @staticmethod
    def line(text):
        """A roff input line of text (no request)."""
        if text[:1] in ('.', "'"):
            return '\\&' + text
        return text

    def inline(self, text):
        """Escape filled text and mark up @params and function names."""
        text = self.esc(text)
        text = re.sub(r'@(\w+)', r'\\fI\1\\fP', text)
        if self.name_re:
            text = self.name_re.sub(lambda m: '\\fB' + m.group(1) + '\\fP' + (m.group(2) or ''),
                                    text)
        return self.line(text)

    def code(self, text):
        out = []
        for raw in text.expandtabs(8).split('\n'):
            out.append(self.line(self.esc(raw)))
        return out


def th(name, version):
    return '.TH %s 3 "" "keymutex %s" "%s"' % (name.upper(), version, MANUAL)


def page_for(doc, aliases, docs_by_name, header_lines, roff, version):
    out = [th(doc.name, version)]
    names = [doc.name] + [a.name for a in aliases]
    out += ['.SH NAME', '%s \\- %s' % (', '.join(names), roff.esc(doc.summary or doc.comment))]
    out += ['.SH SYNOPSIS', '.nf', '.B #include <%s>' % doc.header, '.PP']
    defs = SYNOPSIS_DEFS.get(doc.name, [])
    for d in defs:
        block = d.startswith('struct ') or d.endswith('_fn')
        if block and out[-1] not in ('', '.PP'):
            out.append('')
        out += roff.code(find_def(header_lines, d))
        if block:
            out.append('')
    if out[-1] not in ('', '.PP'):
        out.append('')
    for d in [doc] + aliases:
        out += roff.code(wrap_decl(d.decl))
    out.append('.fi')
    if doc.kind == 'function':
        out += ['.PP', 'Link with \\fI\\-lkeymutex\\fP '
                '(\\fIpkg\\-config \\-\\-libs keymutex\\fP).']
    out.append('.SH DESCRIPTION')
    if doc.params:
        for pname, ptext in doc.params:
            out += ['.TP', '.I %s' % pname, roff.inline(ptext)]
        out.append('.PP')
    returns = []
    body = []
    if doc.comment:
        body.append(('text', doc.comment))
    for kind, text in doc.paras:
        if kind == 'text' and text.startswith('Any other value'):
            returns.append(text)
        elif kind == 'text' and text.startswith('Returns'):
            sentences = re.split(r'(?<=\.)\s+(?=[A-Z])', text)
            for k, sentence in enumerate(sentences):
                if k and NOT_RESULT_RE.match(sentence):
                    returns.append(' '.join(sentences[:k]))
                    body.append(('text', ' '.join(sentences[k:])))
                    break
            else:
                returns.append(text)
        else:
            body.append((kind, text))
    if not body and not doc.params and not aliases:
        summary = doc.summary[:1].upper() + doc.summary[1:]
        body.append(('text', summary + '.'))
    first = True
    for kind, text in body:
        if not first:
            out.append('.PP')
        first = False
        if kind == 'code':
            out += ['.RS 4', '.EX'] + roff.code(text) + ['.EE', '.RE']
        else:
            out.append(roff.inline(text))
    if aliases:
        if not first:
            out.append('.PP')
        lead = aliases[0].comment or 'Shorthands:'
        out.append(roff.inline(lead))
        for a in aliases:
            text = a.comment if a is not aliases[0] else ''
            out += ['.TP', '.BR %s ()' % a.name]
            out.append(roff.inline(text) if text else
                       roff.inline('%s() with NULL options.' % doc.name))
    if returns:
        out.append('.SH RETURN VALUE')
        for k, text in enumerate(returns):
            if k:
                out.append('.PP')
            out.append(roff.inline(text))
    # SEE ALSO: the other pages this one's text names, and the overview.
    text_all = ' '.join([doc.comment] + [t for _, t in doc.paras] + [t for _, t in doc.params]
                        + [a.comment for a in aliases])
    seen = []
    for other in docs_by_name.values():
        if other.section == doc.section and other.kind == doc.kind and other is not doc:
            seen.append(other.name)
    for m in re.finditer(r'\b(km_\w+|KM_[A-Z_]+)\b', text_all):
        n = m.group(1)
        target = ALIASES.get(n, n)
        if target in docs_by_name and target != doc.name and target not in seen:
            seen.append(target)
    refs = ['.BR keymutex (3)'] + ['.BR %s (3)' % n for n in seen]
    out.append('.SH SEE ALSO')
    out.append(',\n'.join(refs))
    return '\n'.join(out) + '\n'


def overview(opening, page_docs, roff, version):
    out = [th('keymutex', version), '.SH NAME', 'keymutex \\- locking by key',
           '.SH SYNOPSIS', '.nf', '.B #include <keymutex.h>',
           '.B #include <keymutex_scoped.h>  /* C scoped locks (GCC, Clang) */',
           '.B #include <keymutex.hpp>       /* C++17 layer */', '.fi', '.PP',
           'Link with \\fI\\-lkeymutex\\fP: \\fIpkg\\-config \\-\\-cflags \\-\\-libs keymutex\\fP, '
           'or in CMake \\fIfind_package(keymutex)\\fP and the target '
           '\\fIkeymutex::keymutex\\fP, or in Meson \\fIdependency(\'keymutex\')\\fP.',
           '.SH DESCRIPTION']
    # The opening comment: a title line, paragraphs, and "- " bullet lists.
    lines = [l for l in opening if not l.startswith('SPDX-License-Identifier')]
    if lines and re.match(r'^keymutex:', lines[0]):
        lines = lines[1:]
    paras = []
    cur = None
    for l in lines:
        if not l.strip():
            cur = None
            continue
        m = re.match(r'^\s*- (.*)$', l)
        if m:
            cur = ['bullet', m.group(1)]
            paras.append(cur)
        elif cur is not None:
            cur[1] += ' ' + l.strip()
        else:
            cur = ['text', l.strip()]
            paras.append(cur)
    for kind, text in paras:
        out += ['.IP \\(bu 2' if kind == 'bullet' else '.PP', roff.inline(text)]
    out += ['.SH FUNCTIONS']
    for d in page_docs:
        if d.kind != 'function':
            continue
        out += ['.TP', '.BR %s (3)' % d.name, roff.esc(d.summary or d.comment)]
    out += ['.SH C SCOPED LOCKS',
            '\\fI<keymutex_scoped.h>\\fP declares guards that are unlocked when the '
            'enclosing block is left (return, break, continue, goto), with the GCC and '
            'Clang cleanup attribute:']
    for d in page_docs:
        if d.kind == 'macro':
            out += ['.TP', '.BR %s (3)' % d.name, roff.esc(d.summary)]
    out += ['.SH C++',
            '\\fI<keymutex.hpp>\\fP is a header-only C++17 layer: \\fBkeymutex::table\\fP '
            '(owns a table, move-only), RAII guards from \\fBlock\\fP, \\fBtry_lock\\fP, '
            '\\fBlock_until\\fP, \\fBlock_for\\fP and \\fBlock_shared\\fP, and '
            '\\fBkeymutex::key_lock\\fP for \\fBstd::unique_lock\\fP, '
            '\\fBstd::scoped_lock\\fP and \\fBstd::shared_lock\\fP. Errors are '
            '\\fBstd::system_error\\fP exceptions (\\fBstd::generic_category\\fP), or '
            '\\fBstd::error_code\\fP out-parameters in the noexcept overloads. The '
            'header\'s opening comment documents it.',
            '.SH SEE ALSO',
            ',\n'.join('.BR %s (3)' % d.name for d in page_docs)]
    return '\n'.join(out) + '\n'


def build(args):
    docs, opening, hlines = parse_header(args.header, 'function')
    sdocs, _, _ = parse_header(args.scoped_header, 'macro')
    by_name = {d.name: d for d in docs}
    pages = []           # docs with a page of their own
    aliases = {}         # target -> [alias docs]
    for d in docs:
        if d.name in ALIASES:
            target = ALIASES[d.name]
            if target not in by_name:
                fail('%s: alias target %s is not declared' % (d.name, target))
            aliases.setdefault(target, []).append(d)
        elif d.summary or d.comment:
            pages.append(d)
        else:
            fail('%s is declared in %s without a doc comment' % (d.name, d.header))
    for name in ALIASES:
        if name not in by_name:
            fail('ALIASES names %s, which the header does not declare' % name)
    for d in sdocs:
        if not d.summary:
            fail('%s has no kernel-doc summary' % d.name)
    pages += sdocs
    return pages, aliases, by_name, opening, hlines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--header', required=True)
    ap.add_argument('--scoped-header', required=True)
    ap.add_argument('--version', default='')
    ap.add_argument('--outdir')
    ap.add_argument('--list', action='store_true', help='print the page file names')
    args = ap.parse_args()

    pages, aliases, by_name, opening, hlines = build(args)
    files = ['keymutex.3'] + [d.name + '.3' for d in pages]
    for target in aliases:
        files += [a.name + '.3' for a in aliases[target]]
    if args.list:
        print('\n'.join(files))
        return
    if not args.outdir:
        fail('--outdir or --list is needed')
    page_names = {d.name: d for d in pages}
    roff = Roff(sorted(page_names) + sorted(ALIASES))
    os.makedirs(args.outdir, exist_ok=True)

    def write(name, text):
        path = os.path.join(args.outdir, name)
        tmp = path + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
        os.replace(tmp, path)

    header = '.\\" Generated by man/gen-man.py from the keymutex headers: do not edit.\n'
    write('keymutex.3', header + overview(opening, pages, roff, args.version))
    for d in pages:
        write(d.name + '.3', header + page_for(d, aliases.get(d.name, []), page_names,
                                               hlines, roff, args.version))
        for a in aliases.get(d.name, []):
            write(a.name + '.3', '.so man3/%s.3\n' % d.name)


if __name__ == '__main__':
    main()
