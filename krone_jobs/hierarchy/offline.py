"""The offline Log Abstraction Model: ENTITY -> ACTION -> STATUS from log-grammar rules, no network, no model.

Each template is placed from its own text alone (no corpus statistics), so the result is deterministic,
independent of dict order, and extending a hierarchy batch by batch gives the same nodes as one big batch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from krone_jobs.hierarchy.model import NONE, TemplateNode, make_node

# --------------------------------------------------------------------------------------------- lexicon
# Base forms of verbs that appear in system logs. Inflected forms (-s/-ed/-ing) are found by rule; the
# list is needed for bare forms ("ask", "Reopen") and to pick the right lemma of an inflection.
VERBS = frozenset(
    """
    abort accept access acquire activate add adjust allocate apply assign attach attempt authenticate
    ask boot bind bring build cache calibrate call cancel catch change check clean clear close commit
    compile complete configure connect copy create deactivate decode defer delete deliver deny destroy
    detach detect determine disable discover dispatch disconnect display do download drop dump enable
    encode enter establish execute exit expire export fetch fill find finish flush force format free
    generate get give halt handle hang ignore import init initialize insert install interrupt invoke
    issue join kill launch leave limit link list listen load lock log login logout lookup lose make
    map mark merge migrate modify monitor mount move notify obtain open parse pass pause perform place
    poll power prepare probe process query queue read reboot receive reclaim record recover redirect
    register reject release reload remove rename reopen repair replace replicate report request reserve
    reset resolve restart restore resume retry return run save scan schedule scrub send serve set setup
    shut shutdown skip sleep start startup stop store submit suspend switch sync synchronize take
    terminate test time transfer transmit trap trigger try unload unlock unmount unregister update
    upgrade upload use validate verify wait wake warn write
    """.split()
)
# Irregular past forms that the suffix rules cannot undo.
IRREGULAR = {
    "got": "get", "gotten": "get", "sent": "send", "found": "find", "made": "make", "ran": "run",
    "lost": "lose", "began": "begin", "begun": "begin", "brought": "bring", "caught": "catch",
    "held": "hold", "left": "leave", "took": "take", "taken": "take", "wrote": "write", "written": "write",
    "done": "do", "did": "do", "gone": "go", "went": "go", "given": "give", "gave": "give", "kept": "keep",
    "built": "build", "told": "tell", "bound": "bind", "broke": "break", "broken": "break", "froze": "freeze",
    "frozen": "freeze", "hid": "hide", "hidden": "hide", "saw": "see", "seen": "see", "stuck": "stick",
    "struck": "strike", "thrown": "throw", "threw": "throw", "woke": "wake", "read": "read", "shut": "shut",
    "set": "set", "put": "put", "hung": "hang", "understood": "understand", "chose": "choose",
}
# Verbs that only carry tense or intent ("is added", "trying to delete"): the next verb is the action.
LIGHT_VERBS = frozenset("be is are was were been being has have had do does did will would can could "
                        "should may might must shall try attempt going let need want seem".split())
# -ing/-ed words that are not verb forms.
NOT_VERBS = frozenset("string during nothing something anything everything thing ring king bring warning "
                      "pending padding heading morning ceiling spring swing sibling building evening "
                      "speed need feed seed bed red hundred embedded shared unused unexpected "
                      "unknown limited detailed".split())
# Words never taken as entity or action (determiners, prepositions, pronouns, conjunctions, adverbs).
STOPWORDS = frozenset(
    """
    a an the this that these those it its it's is are was were be been of to for from in on at by with
    without into onto over under via per as and or but not no nor so if then than there here while when
    whence where which who whom what all any each every some such other same own both either neither
    already also just only still yet again ever never now very too more most less least up down out off
    about after before because since until upon within will would can could should may might must shall
    my your our their his her we you they i me us them one
    """.split()
)
# Outcome words, most specific first: the first class found in the template is its status. "unexpected":
# the step ran, but on a state its code did not expect (a redundant request, a duplicate, an empty payload,
# something already there); the authors' LLM hierarchy gives such HDFS templates the statuses "redundant",
# "empty" and "already existing". Its name is an error word to the Nested-Aware detector, so a never-seen
# step of that kind is anomalous (HDFS demo at 1 % training: 50 missed anomalies -> 0, no false alarm added).
STATUS_WORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("exception", frozenset({"exception", "exceptions", "panic", "traceback", "segfault", "oops"})),
    ("timeout", frozenset({"timeout", "timeouts", "timedout"})),
    ("refused", frozenset({"refused", "refuse", "refuses"})),
    ("denied", frozenset({"denied", "deny", "denies", "unauthorized", "forbidden"})),
    ("invalid", frozenset({"invalid", "illegal", "corrupt", "corrupted", "bad", "mismatch"})),
    ("failed", frozenset({"fail", "fails", "failed", "failure", "failures", "unable", "cannot", "can't",
                          "couldn't", "unreachable", "abort", "aborted", "aborting", "fatal"})),
    ("error", frozenset({"error", "errors", "err", "syserr", "critical", "crit", "emerg", "alert"})),
    ("warning", frozenset({"warning", "warnings", "warn", "deprecated"})),
    ("unknown", frozenset({"unknown", "unrecognized", "unsupported", "missing", "lost"})),
    ("unexpected", frozenset({"unexpected", "redundant", "duplicate", "duplicated", "duplicates", "empty", "already"})),
    ("success", frozenset({"success", "succeeded", "succeed", "successful", "successfully", "ok", "passed"})),
    ("completed", frozenset({"completed", "complete", "done", "finished", "ready"})),
)
# Verbs that report an outcome, not an action: "Verification succeeded" is about verifying.
OUTCOME_VERBS = frozenset({"succeed", "fail", "complete", "finish", "pass", "refuse", "deny", "warn", "time"})
# Short forms used in identifiers ("blk_<*>", "pkt") and the noun they stand for.
ABBREVIATIONS = {"blk": "block", "pkt": "packet", "msg": "message", "conn": "connection", "dev": "device",
                 "addr": "address", "proc": "process", "pid": "process", "req": "request", "resp": "response"}

# ------------------------------------------------------------------------------------------- patterns
_VAR = "<*>"
MAX_NAME_CHARS = 64
"""Entity and action names are cut to this length: they are parts of every node id and KRONE Seq key, and a
one-word template of 60 KB must not make a 60 KB entity. The longest real name seen (loghub samples, the
demo sets) has 54 characters."""
_ADDRESS = re.compile(r"^(?:/?<\*>|[\d.]+)(?::(?:<\*>|\d+))*:?(?=\s|[A-Za-z]|$)")
_MARKER = re.compile(r"^(?:[A-Z]+\*|[-=#>*]+)\s+")  # HDFS "BLOCK*", "--" and the like
_PROGRAM = re.compile(r"^(?P<prog>[A-Za-z/][\w.\-/<>*]*?|[A-Z][a-z]+(?: [A-Z][a-z]+){1,2})"
                      r"(?:\[[^\]]*\]|\([^)]*\))*:(?:\s+|$)")
_METHOD = re.compile(r"^(?:[A-Za-z_]\w*\.)*(?P<cls>[A-Z]\w*)\.(?P<meth>[a-z]\w*):(?:\s+|$)")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_'<>*.\-]*|<\*>|[^\sA-Za-z]")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_ID = re.compile(r"^([a-z]+)_<\*>$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the rules put one template."""

    entity: str
    action: str
    status: str


class OfflineExtractor:
    """Rule-based, deterministic ENTITY -> ACTION -> STATUS extractor (``origin = "offline"``).

    Rules, applied to each template text on its own:

    1. **Prefix.** Leading addresses (``<*>:50010``), markers (``BLOCK*``) and wildcards are dropped. A
       syslog prefix ``prog[<*>]:`` names the program, which becomes the entity: in such logs the program
       is the subsystem every message of it is about. A ``Class.method:`` prefix names the action (the
       method's leading verb) and, when the method is verb+noun (``allocateBlock``), its object as entity;
       a bare-verb method (``NameSystem.delete``) acts on the class itself.
    2. **Action.** The first verb of the message: a known base form, an ``-ing``/``-ed``/``-s`` form or an
       irregular past, lemmatised (``Receiving`` -> ``receive``), also inside camelCase identifiers
       (``writeBlock`` -> ``write``). Light verbs (``is``, ``trying to``) defer to the next verb, and outcome
       verbs (``succeeded``, ``failed``) are status, not action; with no other verb a deverbal subject
       (``Verification succeeded``) names the action. No verb gives ``none``.
    3. **Entity** (no prefix): the head noun of the phrase before the verb (the subject: ``PacketResponder``,
       ``Unexpected error``), else of the first noun phrase after it (the object: ``Receiving block blk_<*>``
       -> ``block``). Identifier shapes give their noun (``blk_<*>`` -> ``block``). A fault noun as subject
       (``Exception in receiveBlock``) is kept: such messages are about the fault, and keeping them apart
       from the normal events of the object lets a failure show at the entity level. A message with neither
       (``<*> shutdown succeeded``) is about the activity itself: the action names the entity, so the
       subject-less messages of one activity share an entity instead of each being a node of its own.
    4. **Status.** The most specific outcome word anywhere in the template (``exception`` before ``error``
       before ``success`` ...), else ``none``.

    Entities and actions are lower-cased; ``none`` gets a node per statement (see :func:`node_ids`).
    """

    origin = "offline"

    def extract(self, templates: Mapping[str, str]) -> list[TemplateNode]:
        return [self.node(tid, text) for tid, text in sorted(templates.items())]

    def node(self, template_id: str, template: str) -> TemplateNode:
        p = place(template)
        return make_node(template_id, template, p.entity, p.action, p.status, self.origin)


# ------------------------------------------------------------------------------------------- the rules
_MASK = re.compile(r"<[A-Z]{2,8}>")


def place(template: str) -> Placement:
    """Entity, action and status of one template text (the whole rule set; see :class:`OfflineExtractor`).

    Named masks from the template miner (``<NUM>``, ``<IP>``, ``<ID>``...) are parameters like ``<*>``."""
    template = _MASK.sub(_VAR, template)
    status = find_status(template)
    body = _strip_noise(template)
    entity = NONE
    action = NONE
    program = _PROGRAM.match(body)
    method = _METHOD.match(body)
    if method:
        verb, obj = _split_identifier(method["meth"])
        action = verb or NONE
        entity = obj or _noun(method["cls"])
        body = body[method.end():]
    elif program:
        entity = _program_name(program["prog"])
        body = body[program.end():]
    tokens = _tokens(body)
    if action == NONE:
        action, verb_at = _first_verb(tokens)
    else:
        verb_at = -1
    if entity == NONE:
        entity = _subject(tokens, verb_at) or _object(tokens, verb_at) or NONE
    named = _deverbal(entity) if action == NONE else None
    if named:
        action, entity = named, _object(tokens, _index_of_noun(tokens, entity)) or NONE
    if entity == NONE:
        entity = action
    return Placement(entity[:MAX_NAME_CHARS], action[:MAX_NAME_CHARS], status)


def find_status(template: str) -> str:
    """The first outcome class (in :data:`STATUS_WORDS` order) with a word in the template."""
    words = {w.lower() for tok in re.findall(r"[A-Za-z']+", template) for w in (tok, *_CAMEL.findall(tok))}
    if "timed" in words and re.search(r"\btimed\s+out\b", template, re.IGNORECASE):
        return "timeout"
    for name, members in STATUS_WORDS:
        if words & members:
            return name
    return NONE


def lemma(word: str) -> str:
    """Base form of a verb form by rule: irregulars, -ies/-ied, -ing/-ed/-es/-s, doubled consonants."""
    w = word.lower()
    if w in VERBS:
        return w
    if w in IRREGULAR:
        return IRREGULAR[w]
    for suffix in ("ing", "ed", "es", "s"):
        if not w.endswith(suffix) or len(w) - len(suffix) < 2:
            continue
        stem = w[: -len(suffix)]
        if suffix in ("ed", "es") and stem.endswith("i"):
            return stem[:-1] + "y"
        for cand in (stem, stem + "e", stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else ""):
            if cand in VERBS:
                return cand
        if suffix == "s":
            return w
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
            return stem[:-1]
        if re.search(r"(?:[^aeiou][aeiou][cvzg]|[^aeiou]at|iz|ur|[aeiou]s)$", stem):
            return stem + "e"
        return stem
    return w


# ------------------------------------------------------------------------------------------- helpers
def _strip_noise(template: str) -> str:
    """Drop leading wildcards, host:port addresses and markers so the message (or its prefix) comes first."""
    text = template.strip()
    while True:
        before = text
        text = _ADDRESS.sub("", text, count=1).lstrip()
        text = _MARKER.sub("", text, count=1)
        if text == before:
            return text


def _program_name(prog: str) -> str:
    """``/usr/sbin/gmetad`` -> ``gmetad``; ``sshd<*>`` -> ``sshd``; multi-word names are joined."""
    name = prog.rsplit("/", 1)[-1] if prog.startswith("/") else prog
    name = name.replace(_VAR, "").strip("-_.").lower()
    return name.replace(" ", "_") or NONE


def _tokens(body: str) -> list[str]:
    """Words (identifiers kept whole), ``<*>`` and single punctuation marks, in order."""
    return [tok.rstrip(".-") or tok for tok in _TOKEN.findall(re.sub(r"\.{2,}", " ", body))]


def _is_boundary(tok: str) -> bool:
    return tok == _VAR or not tok[0].isalpha() or tok.lower() in STOPWORDS


def _verb_of(tok: str) -> str | None:
    """The lemma when ``tok`` is a verb form, ``None`` otherwise (camelCase: its first part)."""
    if not tok[0].isalpha() or _VAR in tok:
        return None
    parts = _CAMEL.findall(tok)
    first = parts[0].lower() if parts else tok.lower()
    if len(parts) > 1 and not tok.isupper():
        return lemma(first) if lemma(first) in VERBS else None
    if first in LIGHT_VERBS:
        return first
    if first in STOPWORDS or first in NOT_VERBS:
        return None
    if first in VERBS or first in IRREGULAR:
        return lemma(first)
    if re.search(r"(?:ing|ed)$", first) and len(first) > 4:
        return lemma(first)
    if (first.endswith("s") and first[:-1] in VERBS) or (first.endswith("es") and first[:-2] in VERBS):
        return lemma(first)
    return None


def _first_verb(tokens: list[str]) -> tuple[str, int]:
    """First action verb and its index; outcome verbs count only when nothing else is found."""
    outcome: tuple[str, int] | None = None
    for i, tok in enumerate(tokens):
        verb = _verb_of(tok)
        if verb is None or verb in LIGHT_VERBS:
            continue
        if verb in OUTCOME_VERBS:
            outcome = outcome or (verb, i)
            continue
        return verb, i
    return (NONE, outcome[1]) if outcome else (NONE, -1)


def _split_identifier(ident: str) -> tuple[str | None, str | None]:
    """``addStoredBlock`` -> (``add``, ``block``); ``delete`` -> (``delete``, None); no verb -> (None, None)."""
    parts = _CAMEL.findall(ident)
    if not parts:
        return None, None
    verb = lemma(parts[0])
    if verb not in VERBS:
        return None, None
    return verb, (_noun(parts[-1]) if len(parts) > 1 else None)


def _noun(tok: str) -> str:
    """Normalised noun: identifier shape to its noun, abbreviations expanded, simple plural removed."""
    m = _ID.match(tok)
    parts = [p for p in tok.split(".") if _VAR not in p and re.search(r"[A-Za-z]{2}", p)]
    word = (m[1] if m else (parts or [tok])[-1]).strip("'-_").lower()
    word = ABBREVIATIONS.get(word, word)
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word


def _is_noun(tok: str) -> bool:
    return not _is_boundary(tok) and _verb_of(tok) is None and bool(re.search(r"[A-Za-z]{2}", tok))


def _head(tokens: list[str], start: int, stop: int) -> str | None:
    """Head noun (last noun) of the first noun phrase in ``tokens[start:stop]``."""
    head = None
    for tok in tokens[start:stop]:
        if _ID.match(tok):
            return head or _noun(tok)
        if _is_noun(tok):
            head = _noun(tok)
        elif head is not None:
            return head
    return head


def _subject(tokens: list[str], verb_at: int) -> str | None:
    """Head of the noun phrase that opens the message, if it comes before the verb (or there is none)."""
    stop = verb_at if verb_at >= 0 else len(tokens)
    if not tokens or (not _is_noun(tokens[0]) and not _ID.match(tokens[0])):
        return None
    return _head(tokens, 0, stop)


def _object(tokens: list[str], verb_at: int) -> str | None:
    """Head of the first noun phrase after the verb."""
    if verb_at < 0:
        return None
    return _head(tokens, verb_at + 1, len(tokens))


def _deverbal(noun: str) -> str | None:
    """``verification`` -> ``verify``: nouns that name an action (used when the message has no verb)."""
    for suffix, repl in (("ification", "ify"), ("ization", "ize"), ("isation", "ise"), ("ation", "ate")):
        if noun.endswith(suffix) and len(noun) > len(suffix) + 2:
            return noun[: -len(suffix)] + repl
    return None


def _index_of_noun(tokens: list[str], noun: str) -> int:
    """Index of the token whose noun is ``noun`` (the deverbal subject), so the object search starts after it."""
    return next((i for i, tok in enumerate(tokens) if _noun(tok) == noun), -1)
