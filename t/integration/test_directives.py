#!/usr/bin/env python3
"""test_directives - every directive the parser accepts takes effect, or says it does not.

Walks conf/cfg_directives.def against t/directive_proofs.txt (HACKING.md,
"Every directive takes effect or says it does not"):

  - every directive line of the .def has exactly one entry, in .def order, and
    no entry names a directive the .def lacks;
  - an IMPL directive names a test: the file is run by `make check` (it is in
    Makefile.am's UNIT_TESTS or INTEGRATION_TESTS), the FUNCTION it names (if
    any) is defined and registered (called in a Python test, UNIT_TEST() in a
    C one), and the file or a t/lib module it imports names the directive;
  - a NOTI directive says "not implemented" and pmtad warns about it at load
    with file:line; a REFU one says "refused" and pmtad refuses a
    configuration that sets it, with file:line;
  - an IMPL directive without a proof yet says "gap: WHY": reported as a TAP
    TODO (visible in every run, it does not fail the suite), so the list of
    unproven directives is always known and can only shrink on purpose.

Needs no daemon and no root: it runs pmtad --check-config only.
"""
import os
import re
import subprocess
import sys
import tempfile

SRC = os.environ.get("PMTA_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PMTA_BUILDDIR", SRC)
SCOPE_WORDS = {"G": "global", "D": "domain", "S": "source", "V": "virtual-mta",
               "P": "virtual-mta-pool", "SPL": "smtp-pattern-list", "PL": "pattern-list",
               "AF": "acct-file", "U": "smtp-user", "SND": "sender", "SP": "spool",
               "L": "smtp-listener", "SG": "source-group", "DKL": "domain-key-list",
               "MXR": "mx-rollup-list", "BCP": "bounce-category-patterns",
               "WP": "warmup-plan", "CL": "cluster"}
# a block of the scope to put a directive in (for the load checks)
BLOCKS = {"global": ("", ""), "domain": ("<domain x.example>\n", "</domain>\n"),
          "source": ("<source 10.0.0.0/8>\n", "</source>\n"),
          "virtual-mta": ("<virtual-mta v>\n", "</virtual-mta>\n"),
          "acct-file": ("<acct-file /tmp/x.csv>\n", "</acct-file>\n"),
          "spool": ("<spool /tmp/s>\n", "</spool>\n"),
          "smtp-user": ("<smtp-user u>\n", "</smtp-user>\n"),
          "source-group": ("<source-group g>\n", "</source-group>\n"),
          "smtp-listener": ("<smtp-listener 127.0.0.1:2599>\n", "</smtp-listener>\n"),
          "mx-rollup-list": ("<mx-rollup-list>\n", "</mx-rollup-list>\n")}
SAMPLE = {"int": "3", "bool": "yes", "interval": "1m", "rate": "10/m", "size": "1M",
          "string": "x", "words": "x y", "interval_list": "1m"}


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, diag=None, todo=None):
        self.n += 1
        print("%s %d - %s%s" % ("ok" if cond else "not ok", self.n, name,
                                " # TODO " + todo if todo else ""), flush=True)
        if not cond and not todo:
            self.failed += 1
            for line in str(diag or "").splitlines():
                print("# " + line)
        return cond

    def done(self):
        print("1..%d" % self.n)
        return 1 if self.failed else 0


def directives():
    """[(key, name, scope word, type, status)] in .def order; key adds " in SCOPE" when needed."""
    text = open(os.path.join(SRC, "conf", "cfg_directives.def")).read()
    pat = re.compile(r'^CFG_DIRECTIVE\(\w+, "([^"]+)", CFG_T_(\w+), ([^,]+), .*?, (\w+)\)\s*$',
                     re.M)
    rows = pat.findall(text)
    names = [r[0] for r in rows]
    out = []
    for name, typ, scopes, status in rows:
        first = scopes.split("|")[0].strip()
        scope = SCOPE_WORDS.get(first, first)
        key = name + (" in " + scope if names.count(name) > 1 else "")
        status = {"CFG_IMPLEMENTED": "IMPL", "CFG_NOT_IMPLEMENTED": "NOTI"}.get(status, status)
        out.append((key, name, scope, typ.lower(), status))
    return out


def proofs():
    out = []
    for line in open(os.path.join(SRC, "t", "directive_proofs.txt")):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"^(\S+(?: in \S+)?)\s{2,}(.+)$", line)
        out.append((m.group(1), m.group(2).strip()) if m else (line, ""))
    return out


def tests_run():
    mk = open(os.path.join(SRC, "Makefile.am")).read()
    return set(re.findall(r"t/(?:unit|integration)/test_\w+(?:\.py)?", mk))


def imported_lib_text(path):
    """The text of the t/lib modules a Python test imports."""
    text = ""
    for mod in re.findall(r"^from (\w+) import|^import (\w+)", open(path).read(), re.M):
        name = mod[0] or mod[1]
        lib = os.path.join(SRC, "t", "lib", name + ".py")
        if os.path.exists(lib):
            text += open(lib).read()
    return text


def check_proof(key, name, proof, run):
    """None if PROOF proves NAME, else why not."""
    path, _, func = proof.partition("::")
    full = os.path.join(SRC, path)
    if not os.path.exists(full):
        return "%s does not exist" % path
    if (path[:-2] if path.endswith(".c") else path) not in run:
        return "%s is not run by make check (not in Makefile.am's TESTS)" % path
    text = open(full, errors="replace").read()
    if func:
        if path.endswith(".py"):
            if not re.search(r"^def %s\(" % re.escape(func), text, re.M) or \
                    len(re.findall(r"\b%s\(" % re.escape(func), text)) < 2:
                return "%s: no function %s that is called" % (path, func)
        elif not re.search(r"UNIT_TEST\(%s\)" % re.escape(func), text):
            return "%s: %s is not a registered UNIT_TEST" % (path, func)
    if path.endswith(".py"):
        text += imported_lib_text(full)
    if name.startswith("/"):  # the lines of <bounce-category-patterns> have no name of their own
        name = "bounce-category-patterns"
    if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(name), text):
        return "%s never names %s" % (path, name)
    return None


def load_diag(text):
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([os.path.join(BUILD, "master", "pmtad"), "--check-config", "-c", f.name],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr, f.name
    finally:
        os.unlink(f.name)


def check_load(tap, name, scope, typ, status):
    """A NOTI directive loads with a file:line warning; a REFU one is refused with file:line."""
    if scope not in BLOCKS or typ not in SAMPLE:
        return
    head, tail = BLOCKS[scope]
    text = head + "%s %s\n" % (name, SAMPLE[typ]) + tail
    rc, out, path = load_diag(text)
    line = text.count("\n", 0, text.index(name + " ")) + 1
    base = os.path.basename(path)
    if status == "NOTI":
        ok = re.search(r"%s:%d: warning: directive '%s' is not implemented" %
                       (re.escape(base), line, re.escape(name)), out)
        tap.ok(ok, "%s: loads with a warning at file:line" % name, out)
    else:
        ok = rc != 0 and re.search(r"%s:%d: error: directive '%s' is not implemented" %
                                   (re.escape(base), line, re.escape(name)), out)
        tap.ok(ok, "%s: a configuration that sets it is refused at file:line" % name, out)


def main():
    tap = Tap()
    defs = directives()
    table = proofs()
    keys = [k for k, *_ in defs]
    tkeys = [k for k, _ in table]
    tap.ok(tkeys == keys, "directive_proofs.txt has one entry per .def line, in .def order",
           "missing: %s\nunknown: %s\nduplicated: %s" % (
               [k for k in keys if k not in tkeys], [k for k in tkeys if k not in keys],
               sorted({k for k in tkeys if tkeys.count(k) > 1})))
    run = tests_run()
    proof_of = dict(table)
    gaps = []
    for key, name, scope, typ, status in defs:
        proof = proof_of.get(key, "")
        if status == "NOTI":
            tap.ok(proof == "not implemented", "%s: the table says not implemented" % key, proof)
            check_load(tap, name, scope, typ, status)
        elif status == "REFU":
            tap.ok(proof == "refused", "%s: the table says refused" % key, proof)
            check_load(tap, name, scope, typ, status)
        elif proof.startswith("gap:"):
            gaps.append(key)
            tap.ok(False, "%s: takes effect" % key, todo="no test proves it (%s)" % proof[4:].strip())
        else:
            why = check_proof(key, name, proof, run) if proof else "no entry"
            tap.ok(why is None, "%s: proven by %s" % (key, proof), why)
    print("# %d of %d implemented directives have no proof yet: %s" %
          (len(gaps), sum(1 for d in defs if d[4] == "IMPL"), ", ".join(gaps)))
    return tap.done()


if __name__ == "__main__":
    sys.exit(main())
