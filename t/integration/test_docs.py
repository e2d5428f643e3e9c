#!/usr/bin/env python3
"""test_docs.py - the man pages stay in step with the code.

Every directive in conf/cfg_directives.def is documented in doc/pmta-config.5,
and the page says "not implemented" exactly for the directives the parser
accepts with a warning. Every option pmtad's --help prints is in doc/pmtad.8,
and every option pmtactl's --help prints is in doc/pmtactl.8.
"""
import os
import re
import subprocess
import sys

SRC = os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PMTA_BUILDDIR", SRC)
results = []


def check(ok, name):
    results.append((bool(ok), name))


SCOPE_WORDS = {"G": "global", "D": "domain", "S": "source", "V": "virtual-mta",
               "P": "virtual-mta-pool", "SPL": "smtp-pattern-list", "PL": "pattern-list",
               "AF": "acct-file", "U": "smtp-user", "SND": "sender", "SP": "spool",
               "L": "smtp-listener", "SG": "source-group", "DKL": "domain-key-list",
               "MXR": "mx-rollup-list", "BCP": "bounce-category-patterns",
               "WP": "warmup-plan", "CL": "cluster"}


def directives():
    """(name, first scope word, status) for every directive line of the .def file."""
    text = open(os.path.join(SRC, "conf", "cfg_directives.def")).read()
    pat = re.compile(r'^CFG_DIRECTIVE\(\w+, "([^"]+)", \w+, ([^,]+), .*?, (\w+)\)\s*$', re.M)
    out = []
    for name, scopes, status in pat.findall(text):
        if name.startswith("/"):
            continue
        first = scopes.replace("CFG_IN(CFG_S_GLOBAL)", "G").split("|")[0].strip()
        out.append((name, SCOPE_WORDS.get(first, first), status))
    return out


def man_entries():
    text = open(os.path.join(SRC, "doc", "pmta-config.5")).read()
    section = text.split(".SH DIRECTIVES", 1)[1].split("\n.SH ", 1)[0]
    entries = {}
    for block in section.split("\n.TP\n")[1:]:
        lines = block.split("\n")
        name = lines[0].replace(".B ", "").replace("\\-", "-").strip()
        entries.setdefault(name, []).append(" ".join(lines[1:]))
    return entries


def check_help_options(program, page_name):
    """Every --option that PROGRAM --help prints appears in doc/PAGE_NAME."""
    helptext = subprocess.run([os.path.join(BUILD, program), "--help"], capture_output=True,
                              text=True).stdout
    opts = sorted(set(re.findall(r"(--[a-z][a-z-]+)", helptext)))
    page = open(os.path.join(SRC, "doc", page_name)).read().replace("\\-", "-")
    undocumented = [o for o in opts if o not in page]
    name = os.path.basename(program)
    check(opts and not undocumented, f"every {name} --help option is in {page_name}"
          + (f" (missing: {', '.join(undocumented)})" if undocumented else ""))


def main():
    defs = directives()
    man = man_entries()
    missing = sorted({n for n, _, _ in defs if n not in man})
    check(not missing, "every directive is documented in pmta-config.5"
          + (f" (missing: {', '.join(missing)})" if missing else ""))
    wrong = []
    for name, scope, status in defs:
        texts = man.get(name, [])
        if len(texts) > 1:  # one name, several meanings: pick the entry for this scope
            texts = [t for t in texts if re.search(r"\bin " + re.escape(scope) + r"\b", t)]
        says_noti = any("not implemented (warning)" in t for t in texts)
        says_refused = any("not implemented (error)" in t for t in texts)
        is_noti = status in ("NOTI", "CFG_NOT_IMPLEMENTED")
        is_refused = status in ("REFU", "CFG_REFUSED")
        if texts and says_refused != is_refused:
            wrong.append(name)
            continue
        if texts and says_noti != is_noti:
            wrong.append(name)
    check(not wrong, "pmta-config.5 says 'not implemented' exactly where the parser does"
          + (f" (differs: {', '.join(sorted(set(wrong)))})" if wrong else ""))
    for program, page_name in (("master/pmtad", "pmtad.8"), ("tools/pmtactl", "pmtactl.8")):
        check_help_options(program, page_name)
    print(f"1..{len(results)}")
    for i, (ok, name) in enumerate(results, 1):
        print(f"{'ok' if ok else 'not ok'} {i} - {name}")
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
