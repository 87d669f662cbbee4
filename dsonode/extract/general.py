"""General lessons: the `task_specific` rule, and the offline rewrite of a step into a lesson.

Pure (text in, text out), no model. Both extractors apply `task_specific` to every lesson
before it becomes an experience (ARCHITECTURE.md "Extraction"); the offline extractor also uses
`generalise` to turn the step it chose into one imperative sentence with its condition.

## The rule: `task_specific(text, group)`

A lesson is task-specific, and is dropped, when its text holds any of these facts of its
source task (the group: task id, prompt, ground truths). Checks run in this order and the first
that fires is the reason returned:

1. **task id**: the task id, case-insensitively;
2. **answer**: a ground truth of 8 or more characters, case-insensitively;
3. **copied**: a run of `COPIED_WORDS` (6) consecutive words of the prompt (words are
   lower-cased runs of letters and digits);
4. **quoted literal**: any quoted span ('..', "..", `..`, curly quotes) holding a letter or
   digit; an apostrophe inside a word ("don't", "user's") is not a quote;
5. **number**: a number (digits, optionally with one decimal part) that is also a number of the
   prompt or a ground truth, except 0, 1 and 2 (the constants of general methods: "1 - P",
   "halve", "pairs"); "2.0" and "2" are the same number;
6. **identifier**: a token of the prompt that is a code or variable name (it holds "_", a
   digit after a letter, an inner capital as in camelCase, or a dot between names; or it is
   a parameter of a call written in the prompt, "xs" of "f(xs, target)"), or a single letter
   other than a/A/I (letters of units such as km/h excepted), found as a whole token
   (case-sensitive) in the lesson; and any snake_case or camelCase token of the lesson that
   is part of such a name ("report_job" of "test_report_job_runs");
7. **entity**: a capitalised word of the prompt or a ground truth that is not the first word
   of its sentence and not an all-capitals acronym (API, CSV, HTTP name kinds of things, not
   this task's), found as a whole word (case-sensitive) in the lesson.

What it does not see: values the rollouts computed that are in neither the prompt nor the
ground truth (an intermediate sum, say). The extraction benchmark measures those separately
against the generator's own record of each task's values (`param_leak_fraction`).

## The rewrite: `generalise(step, group)`

The step is split into clauses (at ":", ";", " -- ", sentence ends and ", so" / ", since" /
", because" / ", otherwise" / ", which"); asides in parentheses or brackets are removed; a
specific token of the task (rule 4-7) that follows a preposition is removed with it ("for
x", "in Oslo"), one that stands after a noun is removed alone ("the function parse_date");
a clause still holding one, or an equation with a digit, is dropped. The lesson is the first
clause that is an imperative (a verb first, after an optional condition "Before/When/If/After
..., " and adverbs like "first"), with:

- its condition: the clause's own leading condition; else the statement clause just before
  it ("The response is paginated: follow ..." -> "When the response is paginated, follow
  ..."); else the task's kind from the prompt's first imperative ("When asked to write a
  function, ..."); else "When working on a <domain> task, ...";
- the clean clauses after it that still fit in MAX_LESSON_WORDS words.

No imperative clause, or nothing left after the abstraction, and the step yields no lesson:
`generalise` returns the reason instead, which the extractor records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from dsonode.core.wire import MAX_TEXT_BYTES, normalize_text
from dsonode.extract.rollouts import Group

__all__ = [
    "COPIED_WORDS",
    "MAX_LESSON_WORDS",
    "Generalised",
    "TaskFacts",
    "compose",
    "domain_condition",
    "facts_of",
    "generalise",
    "task_specific",
]

MAX_LESSON_WORDS = 32
#: a run of this many words copied from the task makes a lesson task-specific
COPIED_WORDS = 6
#: numbers that general methods use whatever the task ("1 - P", "halve", "pairs")
GENERAL_NUMBERS = frozenset({Decimal(0), Decimal(1), Decimal(2)})

_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w]|\.\d)")
_QUOTED = re.compile(
    r"(?<![A-Za-z0-9])(['\"`])([^'\"`\n]{0,120}?)\1(?![A-Za-z0-9])|‘([^’\n]{0,120})’|“([^”\n]{0,120})”"
)
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CALL_ARGS = re.compile(r"[A-Za-z_]\w*\(([^()]{1,200})\)")


# ------------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class TaskFacts:
    """What the rule knows of a task: its id, and the values, names and entities it holds."""

    task_id: str
    prompt_runs: frozenset[tuple[str, ...]]
    answers: tuple[str, ...]  # ground truths of >= 8 characters, lower-cased
    numbers: frozenset[Decimal]
    identifiers: frozenset[str]
    entities: frozenset[str]


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text).normalize()
    except InvalidOperation:
        return None


def _numbers(text: str) -> set[Decimal]:
    out = set()
    for m in _NUMBER.finditer(text):
        d = _decimal(m.group(0))
        if d is not None:
            out.add(d)
    return out


def _is_identifier(tok: str) -> bool:
    if len(tok) == 1:
        return tok not in ("a", "A", "I")
    if "_" in tok or "." in tok:
        return True
    if re.search(r"[A-Za-z]\d", tok):
        return True
    return bool(re.search(r"[a-z][A-Z]", tok)) or bool(re.search(r"[A-Z]{2}[a-z]", tok))


def _entities(text: str) -> set[str]:
    """Capitalised words that are not the first word of a sentence, nor acronyms."""
    out = set()
    for sentence in _SENTENCE.split(text):
        words = re.findall(r"[A-Za-z][A-Za-z'-]*", sentence)
        for w in words[1:]:
            w = w.split("'")[0]
            name = len(w) >= 2 and w[0].isupper() and not w.isupper()
            letter = len(w) == 1 and w.isupper() and w != "I"  # "fertiliser A", "supplement X"
            if name or letter:
                out.add(w)
    return out


def facts_of(group: Group) -> TaskFacts:
    prompt = group.prompt
    truths = [r.ground_truth for r in group.rollouts if r.ground_truth]
    words = _WORD.findall(prompt.lower())
    runs = frozenset(
        tuple(words[i : i + COPIED_WORDS]) for i in range(len(words) - COPIED_WORDS + 1)
    )
    numbers: set[Decimal] = set()
    entities = _entities(prompt)
    for text in [prompt, *truths]:
        numbers |= _numbers(text)
    for t in truths:
        entities |= _entities(t)
    identifiers = {tok for tok in _TOKEN.findall(_UNIT.sub(" ", prompt)) if _is_identifier(tok)}
    for args in _CALL_ARGS.findall(prompt):  # the parameters of "find_index(xs, target)"
        identifiers.update(a for a in _TOKEN.findall(args) if len(a) > 1)
    return TaskFacts(
        task_id=group.task_id,
        prompt_runs=runs,
        answers=tuple(sorted({t.strip().lower() for t in truths if len(t.strip()) >= 8})),
        numbers=frozenset(numbers - GENERAL_NUMBERS),
        identifiers=frozenset(identifiers),
        entities=frozenset(entities - identifiers),
    )


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _QUOTED.finditer(text):
        inner = next((g for g in m.groups()[1:] if g is not None), "")
        if re.search(r"[A-Za-z0-9]", inner):
            spans.append((m.start(), m.end()))
    return spans


def _specific_spans(text: str, facts: TaskFacts) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every quoted literal, task number, identifier and entity."""
    spans = [(s, e, "quoted literal") for s, e in _quoted_spans(text)]
    for m in _NUMBER.finditer(text):
        if _decimal(m.group(0)) in facts.numbers:
            spans.append((m.start(), m.end(), "number"))
    for m in _TOKEN.finditer(_UNIT.sub(lambda u: " " * len(u.group(0)), text)):
        tok = m.group(0)
        if len(tok) == 1 and tok in facts.entities:
            # a capital letter is an entity of the task only where an article cannot be
            if re.search(r"[a-z,] $", text[: m.start()]):
                spans.append((m.start(), m.end(), "entity"))
            continue
        if _is_identifier(tok) and len(tok) > 2 and any(tok in i for i in facts.identifiers):
            spans.append((m.start(), m.end(), "identifier"))  # "report_job" of "test_report_job"
        elif tok in facts.identifiers:
            spans.append((m.start(), m.end(), "identifier"))
        elif tok in facts.entities:
            spans.append((m.start(), m.end(), "entity"))
        elif "." in tok:  # "csv.DictReader": its parts may be the task's names
            for part in tok.split("."):
                if part in facts.identifiers or part in facts.entities:
                    spans.append((m.start(), m.end(), "identifier"))
                    break
    return sorted(spans)


_KIND_ORDER = ("quoted literal", "number", "identifier", "entity")


def task_specific(text: str, task: Group | TaskFacts) -> str | None:
    """Why `text` is about its source task rather than general (None if it is general).

    The rule is the module docstring's, checks 1-7 in order; `task` is the source group (or
    its `facts_of`, to check many texts against one task without recomputing them).
    """
    facts = task if isinstance(task, TaskFacts) else facts_of(task)
    low = text.lower()
    if facts.task_id.strip() and facts.task_id.lower() in low:
        return "it names the task id"
    if any(a in low for a in facts.answers):
        return "it states the task's answer"
    words = _WORD.findall(low)
    for i in range(len(words) - COPIED_WORDS + 1):
        if tuple(words[i : i + COPIED_WORDS]) in facts.prompt_runs:
            return f"it copies {COPIED_WORDS} words of the task"
    spans = _specific_spans(text, facts)
    for kind in _KIND_ORDER:
        hit = next((text[s:e] for s, e, k in spans if k == kind), None)
        if hit is not None:
            return f"it holds a {kind} of the task ({hit[:40]!r})"
    return None


# ------------------------------------------------------------------------------- the rewrite


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


#: common English verbs used as imperatives in method statements (first word of a lesson)
_VERBS = _set("""
    accept add adjust align allocate analyse analyze answer apply ask assert assign assume
    avoid back balance base build bound bring cache calculate call cancel capture catch check
    choose cite clamp clarify classify clean clear close collect combine commit compare compile
    complete compute confirm consider construct convert copy correlate count create cross-check
    debug decide declare decompose define delete derive describe design detect determine
    distinguish divide document double-check draw drop enable encode ensure estimate evaluate
    examine exclude expand explain export extract factor fetch filter find fix flag follow
    force format freeze gather generate get give go group guard handle identify ignore
    implement import include increase inject inspect instrument intersect isolate keep label
    limit list load locate log look make map mark match measure merge minimise minimize model
    monitor move multiply name narrow normalise normalize note notice observe open order parse
    pass pick pin plan plot prefer prepare preserve print probe profile prove pull put query
    quote randomise randomize rank re-read read rebuild recall recheck recompute record reduce
    refactor refresh reject remember remove rename repeat replace report reproduce request
    require rerun reset resolve restate restrict retry return reuse review rewrite round run
    sample save scale scan search select separate set shrink simplify skip solve sort specify
    split start state stop store subtract summarise summarize take test trace track translate
    treat trim try update use validate verify wait watch weigh write
    """)
_ADVERBS = _set("first always never then also only explicitly carefully briefly still again next")
_CONNECTORS = _set("so and then thus hence therefore")
_SUBORDINATORS = _set("when whenever if before after once while unless on for until where as")
_PREPOSITIONS = _set("""to for with on in of by from at as into like about against over under between via
    than per without""")
_DETERMINERS = _set("the a an this that these those each every all its their his her")
_SPLIT = re.compile(
    r"\s*[;:]\s+|\s+(?:--|—|–)\s+|(?<=[.!?])\s+|,\s+(?=(?:so|since|because|otherwise|which)\b)"
)
_ASIDE = re.compile(r"\s+\([^()]{0,200}\)|\s+\[[^\[\]]{0,200}\]")
#: units such as km/h or m/s: their letters are not variables of the task
_UNIT = re.compile(r"\b[A-Za-z]{1,3}(?:/[A-Za-z]{1,3})+\b")
#: words after which a name is not an appositive: "is 10", "equals 12", "substituting x"
_NOT_NOUN = _set("is are was were be been equals gives give makes make has have")
#: "x = 3": one name set to one number, nothing computed on either side
_ASSIGNMENT = re.compile(
    r"(?<![=+*/^<>-]\s)(?<![=+*/^<>-])\b([A-Za-z]\w*)\s*=\s*(-?\d+(?:\.\d+)?)(?![\w.]|\s*[-+*/^=])"
)
_EQUATION = re.compile(r"[=<>≤≥≈]|\d\s*[-+*/×^]\s*\d")
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I'll|I've|I'd|(?i:me|my|mine|we|us|our))\b")
_LEAD_FILLER = re.compile(
    r"^(?:i'll|i will|i should|i need to|i must|let me|let's|we should|we need to|we must|"
    r"you should|you need to|now|ok|okay)\s+",
    re.I,
)


@dataclass(frozen=True)
class Generalised:
    """A step rewritten as a lesson (`text`), or why it could not be (`dropped`)."""

    text: str | None
    dropped: str | None = None
    removed: tuple[str, ...] = ()  # kinds of task facts abstracted away ("number", ...)
    condition: str = ""  # "when ...": text == compose(condition, action)
    action: str = ""


def _is_verb(word: str) -> bool:
    w = word.lower().strip(",.")
    if w in _VERBS:
        return True
    return "-" in w and w.rsplit("-", 1)[1] in _VERBS  # "sanity-check", "re-run"


def _split_condition(clause: str) -> tuple[str, str] | None:
    """(condition, imperative) of "Before X, do Y" / "First do Y" / "Do Y"; None if no verb."""
    words = clause.split(" ")
    while len(words) > 1 and words[0].lower().strip(",") in _CONNECTORS:
        words = words[1:]  # "..., so compare ...": the instruction starts after "so"
    clause = " ".join(words)
    cond = ""
    if words and words[0].lower() in _SUBORDINATORS and "," in clause:
        head, _, rest = clause.partition(",")
        cond, words = head.strip(), rest.strip().split(" ")
    i = 0
    while i < len(words) - 1 and words[i].lower().strip(",") in _ADVERBS:
        i += 1
    if not words or not words[0] or not _is_verb(words[i]):
        if words and words[0].lower() in ("don't", "do") and len(words) > 2:
            return cond, " ".join(words)
        return None
    return cond, " ".join(words)


def _abstract(clause: str, facts: TaskFacts) -> tuple[str | None, set[str]]:
    """The clause without the task's facts where they can go; None if it still holds one."""
    removed: set[str] = set()

    def value(m: re.Match[str]) -> str:
        # "x = 3" of the task (its variable or its number) is "the value" in general
        var, num = m.group(1), _decimal(m.group(2))
        if var in facts.identifiers or num in facts.numbers:
            removed.add("equation")
            return "the value"
        return m.group(0)

    clause = _ASSIGNMENT.sub(value, clause)
    for _ in range(16):  # bounded: each pass removes one span
        spans = _specific_spans(clause, facts)
        if not spans:
            break
        s, e, kind = spans[0]
        before = clause[:s].rstrip()
        prev = before.split(" ")[-1].lower() if before else ""
        after = clause[e:]
        if kind == "number":
            after = re.sub(r"^\s*(?:%|percent\b)", "", after)
        if prev in _PREPOSITIONS and not re.match(r"\s*[=+*/×^<>-]", after):
            # "for 2022", "in Oslo": the phrase goes with its preposition
            before = before[: len(before) - len(prev)].rstrip()
            clause = (before + " " + after.lstrip()).strip()
        elif (
            kind != "number"
            and prev
            and prev not in _DETERMINERS
            and prev not in _NOT_NOUN
            and not _is_verb(prev)
            and not prev.endswith(("ing", "ed"))
            and not re.match(r"\s*[=+*/×^<>(-]", after)
        ):
            clause = (before + " " + after.lstrip()).strip()  # appositive: "the day 'X'"
        else:
            return None, removed | {kind}
        removed.add(kind)
    if _specific_spans(clause, facts):
        return None, removed
    clause = re.sub(r"\s+([,.;:!?])", r"\1", clause)
    clause = re.sub(r"\s{2,}", " ", clause).strip(" ,")
    if _EQUATION.search(clause) and re.search(r"\d", clause):
        return None, removed | {"equation"}
    if len(_WORD.findall(clause.lower())) < 2:
        return None, removed
    return clause, removed


def _lower_first(text: str) -> str:
    first = text.split(" ")[0]
    if len(first) > 1 and first[:2].isupper():  # an acronym keeps its capitals
        return text
    return text[:1].lower() + text[1:]


def _task_kind(group: Group, facts: TaskFacts) -> str | None:
    """ "asked to <verb> <object>" from the prompt's first imperative sentence, if clean."""
    for sentence in _SENTENCE.split(normalize_text(group.prompt))[:4]:
        words = sentence.rstrip(".!?").split(" ")
        if not words or not _is_verb(words[0]):
            continue
        kept = [words[0].lower()]
        for w in words[1:5]:
            bare = w.strip(",;:")
            if (
                bare.lower() in ("that", "which", "whether", "so", "using", "and", "to", "where")
                or task_specific(bare, facts) is not None
                or not re.fullmatch(r"[A-Za-z-]+", bare)
            ):
                if bare and bare[0].isupper() and re.fullmatch(r"[A-Za-z]+", bare):
                    continue  # an entity adjective ("a Python function"): leave it out
                break
            kept.append(bare.lower())
            if w != bare:
                break
        while len(kept) > 1 and (kept[-1] in _DETERMINERS or kept[-1] in _PREPOSITIONS):
            kept.pop()
        if len(kept) >= 2:
            if len(kept) >= 3 and kept[1] in ("a", "an"):
                kept[1] = "an" if kept[2][0] in "aeiou" else "a"
            return "asked to " + " ".join(kept)
    return None


def domain_condition(domain: str) -> str:
    """ "when working on a math task", "when working on an agent task" """
    words = re.sub(r"[._/-]+", " ", domain).strip()
    if words.endswith("s") and not words.endswith("ss"):
        words = words[:-1]
    article = "an" if words[:1] in ("a", "e", "i", "o", "u") else "a"
    return f"when working on {article} {words} task"


def compose(condition: str, action: str) -> str:
    """ "When <condition>, <action>." (one sentence; the condition starts with its own word)"""
    action = action.rstrip(" .;:,")
    if not condition:
        return f"{action[:1].upper()}{action[1:]}."
    return f"{condition[:1].upper()}{condition[1:]}, {_lower_first(action)}."


def generalise(
    step: str, group: Group, facts: TaskFacts | None = None, max_words: int = MAX_LESSON_WORDS
) -> Generalised:
    """One imperative sentence with its condition, free of the task's facts (module docstring)."""
    facts = facts or facts_of(group)
    text = _ASIDE.sub("", normalize_text(step))
    clauses: list[tuple[int, str]] = []  # (sentence number, clause)
    for n, sentence in enumerate(_SENTENCE.split(text)):
        clauses.extend((n, c.strip(" ,")) for c in _SPLIT.split(sentence) if c.strip(" ,"))
    removed: set[str] = set()
    clean: list[str | None] = []
    for _, c in clauses:
        out, took = _abstract(_LEAD_FILLER.sub("", c), facts)
        removed |= took
        clean.append(out)
    main: tuple[int, tuple[str, str]] | None = None
    for i, kept in enumerate(clean):
        if kept is None:
            continue
        split = _split_condition(kept)
        if split is not None:
            main = (i, split)
            break
    kinds = tuple(sorted(removed))
    if main is None:
        reason = "no imperative clause free of the task's facts"
        return Generalised(None, reason + (f" (held: {', '.join(kinds)})" if kinds else ""), kinds)
    i, (condition, action) = main
    if _FIRST_PERSON.search(action):
        return Generalised(None, "the step narrates (first person), it does not instruct", kinds)
    if not condition and i > 0 and clean[i - 1] is not None:
        prev = clean[i - 1]
        assert prev is not None
        if _split_condition(prev) is None and len(prev.split(" ")) <= 14:
            condition = "when " + _lower_first(prev.rstrip("."))
    if not condition:
        kind = _task_kind(group, facts)
        condition = f"when {kind}" if kind else domain_condition(group.domain)
    action = action.rstrip(" .;:,")
    # the clean clauses after it in its sentence, while they fit ("..., so ...", ": ...")
    for k in range(i + 1, len(clean)):
        nxt = clean[k]
        if nxt is None or clauses[k][0] != clauses[i][0]:
            break
        if not nxt[:1].isalpha() or re.search(r"[=<>]", nxt) or _FIRST_PERSON.search(nxt):
            break  # a formula is an example of this task, not part of the lesson
        because = nxt.split(" ")[0].lower() in ("so", "since", "because", "otherwise", "which")
        joined = action + (", " if because else ": ") + _lower_first(nxt.rstrip(" ."))
        if len(compose(condition, joined).split(" ")) > max_words:
            break
        action = joined
    if len(compose(condition, action).split(" ")) > max_words:
        condition = domain_condition(group.domain)
        if len(compose(condition, action).split(" ")) > max_words:
            return Generalised(None, f"longer than {max_words} words", kinds)
    lesson = compose(condition, action)
    if len(lesson.encode("utf-8")) > MAX_TEXT_BYTES:
        return Generalised(None, f"over {MAX_TEXT_BYTES} bytes", kinds)
    why = task_specific(lesson, facts)
    if why is not None:  # the condition or a join brought a fact back: never let it through
        return Generalised(None, why, kinds)
    return Generalised(lesson, None, kinds, condition, action)
