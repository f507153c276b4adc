#!/usr/bin/env python3
"""Regenerates docs/conformance.md from the tests.

Every test that checks a normative statement says so, in its name (`mqtt_3_3_1_4_...` for
[MQTT-3.3.1-4]) or in its doc comment (`[MQTT-3.3.1-4]`); rules without a statement number are
named after their section (`sec_3_8_3_1_...`). This script collects those citations, so the
table cannot drift from the code. Statements are version-specific: a test in a file whose name
ends in `_v311` or `_v5` checks that version; any other test checks both versions' statement of
that number unless its doc comment names one version.

The requirement column and the list of statements still without a test come from
docs/statements.tsv: every numbered statement of the sections the codec, topics, client and broker
implement, paraphrased, with its scope (codec, client, broker, session).

Usage: scripts/conformance.py [--check]   (--check: exit 1 if docs/conformance.md is stale)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["core/tests", "core/src", "tests", "src"]
OUT = ROOT / "docs" / "conformance.md"
STATEMENTS = ROOT / "docs" / "statements.tsv"
# Hand-written: the places where the specifications let a server choose, and ternmq's choices.
CHOICES = ROOT / "docs" / "choices.md"

TEST_FN = re.compile(r"^\s*(?:pub\s+)?fn\s+([a-z0-9_]+)\s*\(")
NAME_ID = re.compile(r"(?:^|_)mqtt_(\d+)_(\d+)_(\d+)_(\d+)(?=_|$)")
NAME_SEC = re.compile(r"(?:^|_)sec_(\d+(?:_\d+)+)(?=_[a-z])")
DOC_ID = re.compile(r"\[MQTT-(\d+\.\d+\.\d+-\d+)\]")


def version_of(path, doc):
    stem = path.stem
    if stem.endswith("_v311"):
        return ["3.1.1"]
    if stem.endswith("_v5"):
        return ["5.0"]
    if "3.1.1 only" in doc:
        return ["3.1.1"]
    if "MQTT 5 only" in doc or "5.0 only" in doc:
        return ["5.0"]
    return ["3.1.1", "5.0"]


def doc_per_version(doc):
    """For a doc comment that labels its citations "3.1.1: ..." and "5.0: ...", the text that
    follows each label (up to the next); else None."""
    marks = [(m.start(), m.group(1)) for m in re.finditer(r"(?:^|\s)(3\.1\.1|5\.0):", doc)]
    if not marks:
        return None
    parts = {}
    for k, (start, v) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else len(doc)
        parts[v] = parts.get(v, "") + " " + doc[start:end]
    return parts


# Statements the 3.1.1 specification prints with a misprinted number: a test cites the number
# as it should read, and is listed under the number as printed.
MISPRINTED = {
    ("3.1.1", "MQTT-3.1.2-7"): "MQTT-3.1.2.7 *(sic)*",
    ("3.1.1", "MQTT-3.8.3-4"): "MQTT-3-8.3-4 *(sic)*",
}


def collect():
    found = {}  # (version, id) -> set of "file::test"
    for base in SOURCES:
        for path in sorted((ROOT / base).rglob("*.rs")):
            lines = path.read_text(encoding="utf-8").splitlines()
            for i, line in enumerate(lines):
                m = TEST_FN.match(line)
                if not m:
                    continue
                # Only tests: a #[test] attribute among the lines just above.
                j, doc, is_test = i - 1, [], False
                while j >= 0 and (lines[j].strip().startswith(("#[", "///")) or not lines[j].strip()):
                    s = lines[j].strip()
                    if s.startswith("#[test"):
                        is_test = True
                    if s.startswith("///"):
                        doc.append(s[3:])
                    if not s:
                        break
                    j -= 1
                if not is_test:
                    continue
                name = m.group(1)
                doc_text = " ".join(reversed(doc))
                where = "%s::%s" % (path.relative_to(ROOT).as_posix(), name)
                versions = version_of(path, doc_text)
                if name.endswith("_v311"):
                    versions = ["3.1.1"]
                elif name.endswith("_v5"):
                    versions = ["5.0"]
                name_ids = {"MQTT-%s.%s.%s-%s" % g for g in NAME_ID.findall(name)}
                name_ids |= {"section " + s.replace("_", ".") for s in NAME_SEC.findall(name)}
                per_version = doc_per_version(doc_text)
                for v in versions:
                    ids = set(name_ids)
                    if per_version is None:
                        ids |= {"MQTT-" + x for x in DOC_ID.findall(doc_text)}
                    else:
                        # "3.1.1: [...]; 5.0: [...]": each version's own statement numbers.
                        ids = {"MQTT-" + x for x in DOC_ID.findall(per_version.get(v, ""))}
                    for sid in ids:
                        sid = MISPRINTED.get((v, sid), sid)
                        found.setdefault((v, sid), set()).add(where)
    return found


def sort_key(sid):
    return [int(x) for x in re.findall(r"\d+", sid)]


def load_statements():
    """(version, statement) -> (requirement, scope), from docs/statements.tsv."""
    text = {}
    if STATEMENTS.exists():
        for row in STATEMENTS.read_text(encoding="utf-8").splitlines()[1:]:
            parts = row.split("\t")
            if len(parts) >= 4:
                text[(parts[0], parts[1])] = (parts[2].replace("|", "\\|"), parts[3])
    return text


def render(found):
    statements = load_statements()
    out = [
        "# Conformance map",
        "",
        "Each normative statement of the MQTT 3.1.1 and 5.0 specifications that ternmq implements,",
        "with the tests that check it. Generated by `scripts/conformance.py` from the tests' names and",
        "doc comments; do not edit by hand. A statement is listed once per version, since the same",
        "number can mean different things in 3.1.1 and 5.0. Rules the specifications state without a",
        "statement number are listed by section. The section on choices is written by hand, in",
        "`docs/choices.md`.",
        "",
    ]
    if CHOICES.exists():
        out += [CHOICES.read_text(encoding="utf-8").rstrip("\n"), ""]
    for version in ["5.0", "3.1.1"]:
        rows = sorted((sid for (v, sid) in found if v == version), key=sort_key)
        out += ["## MQTT %s" % version, "", "| statement | requirement | tests |", "| --- | --- | --- |"]
        for sid in rows:
            req = statements.get((version, sid), ("", ""))[0]
            tests = "<br>".join("`%s`" % t for t in sorted(found[(version, sid)]))
            out.append("| %s | %s | %s |" % (sid, req, tests))
        out.append("")
    covered = {sid for (_, sid) in found if sid.startswith("MQTT-")}
    out += ["%d statement numbers are checked by at least one test." % len(covered), ""]
    if statements:
        def untested(scopes):
            return sorted(
                ((v, s) for (v, s) in statements if (v, s) not in found and statements[(v, s)][1] in scopes),
                key=lambda k: (k[0], sort_key(k[1])),
            )
        missing = untested({"codec", "client", "broker", "session"})
        out += ["## Not yet checked by a test", "",
                "Statements with no test citing them yet.",
                "Some are met by construction (the encoder cannot produce the forbidden form) or are checked by",
                "a test that cites a neighbouring statement; each still wants a test of its own.",
                "", "| version | statement | requirement | scope |", "| --- | --- | --- | --- |"]
        out += ["| %s | %s | %s | %s |" % (v, s, statements[(v, s)][0], statements[(v, s)][1]) for (v, s) in missing]
        out += [""]
    return "\n".join(out)


def main():
    text = render(collect())
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print("docs/conformance.md is stale: run scripts/conformance.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print("wrote %s" % OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
