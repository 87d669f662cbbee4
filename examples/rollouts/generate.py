"""Generate the sample rollouts in this folder, deterministically (seeded): `python generate.py`.

Each task template is a sequence of step slots:
  ("n", [variants])            neutral: the same kind of step in good and bad attempts
  ("k", [good], [bad])         key: the good variant is what makes an attempt succeed
  ("o", [good], [bad])         outcome: the final answer, which differs but teaches nothing
A rollout succeeds iff every key slot takes its good variant. `meta.good_steps` lists the step
indices of the good key steps of a successful rollout (empty for the others), so a benchmark
can measure whether an extractor picks the steps that made the difference rather than the
answer line or the filler. `meta.params` lists the values filled into the task (names, numbers,
entities, derived results): a lesson that repeats one of them is about this task, not general. Variants are paraphrases, chosen by a seeded RNG, so the lines read
like several different model samples rather than one string repeated.

Text responses put one step per line (the extractor splits on lines); agent trajectories are
OpenAI-style chat messages, one step per assistant turn with content.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261123
ROLLOUTS_PER_TASK = 5
INSTANCES_PER_TEMPLATE = 4
HERE = Path(__file__).resolve().parent

FILLER = [
    "Let me think about this carefully.",
    "Okay, let me continue from here.",
    "Let me re-read the question to make sure I have it right.",
    "I'll work through this step by step.",
    "Alright, next part.",
]

# ----------------------------------------------------------------------------------- math


def _rational(rng):
    a = rng.randint(2, 9)
    c = a + rng.choice([k for k in range(1, 13) if k != a])  # x = c - a must not be a
    return {"a": a, "a2": a * a, "c": c, "x": c - a}


MATH = [
    {
        "name": "rational-equation",
        "params": _rational,
        "prompt": "Solve for x: (x^2 - {a2}) / (x - {a}) = {c}. Give all real solutions.",
        "answer": "x = {x}",
        "slots": [
            ("n", ["The numerator is a difference of squares: x^2 - {a2} = (x - {a})(x + {a}).",
                   "Factor the top: x^2 - {a2} factors as (x - {a})(x + {a})."]),
            ("k", ["Before cancelling, note that x = {a} makes the denominator zero, so x = {a} is excluded from the domain.",
                   "First record the domain restriction: x cannot equal {a}, since the denominator would vanish there."],
                  ["Cancel the common factor (x - {a}) straight away; there is nothing else to worry about.",
                   "The (x - {a}) terms cancel, and the equation is now linear with no restrictions."]),
            ("n", ["After cancelling, x + {a} = {c}.", "So the equation reduces to x + {a} = {c}."]),
            ("n", ["Subtract {a} from both sides: x = {c} - {a} = {x}.", "Hence x = {x}."]),
            ("k", ["Check the candidate against the restriction: x = {x} is not {a}, so it is a valid solution; substituting back gives {c}.",
                   "Verify by substituting x = {x} into the original expression: the denominator is nonzero and the left side equals {c}."],
                  ["That gives the solution directly, no need to substitute back.",
                   "This is clearly the answer, so I will not verify it."]),
            ("o", ["Final answer: x = {x}.", "The only real solution is x = {x}."],
                  ["Final answer: x = {x} and x = {a}.", "Solutions: x = {x}, and also x = {a} from the cancelled factor."]),
        ],
    },
    {
        "name": "percent-change",
        "params": lambda rng: (lambda p, q: {"p": p, "q": q, "r": round((1 + p / 100) * (1 - q / 100) * 100 - 100, 2)})(rng.choice([10, 20, 25, 30, 40]), rng.choice([10, 20, 25, 30])),
        "prompt": "A price rises by {p}% and then falls by {q}%. What is the overall percentage change?",
        "answer": "{r}%",
        "slots": [
            ("n", ["Let the original price be 100 to keep the numbers simple.",
                   "Take the starting price as 100 units."]),
            ("k", ["Percent changes compound multiplicatively, so apply them as factors: (1 + {p}/100) * (1 - {q}/100).",
                   "Successive percentage changes multiply rather than add, so multiply the two factors together."],
                  ["The overall change is just {p}% - {q}%, since the two changes combine by addition.",
                   "Add the percentages: +{p}% and -{q}% together give the net change."]),
            ("n", ["After the rise the price is {p} units higher.", "The first change moves the price up by {p} units."]),
            ("k", ["Apply the second change to the new price, not the original: the decrease is {q}% of the raised price.",
                   "The {q}% decrease is taken on the increased price, so its base is larger than 100."],
                  ["The decrease is {q}% of the original 100.", "Take {q}% off the original price of 100."]),
            ("o", ["The overall change is {r}%.", "Net result: {r}% relative to the start."],
                  ["The overall change is {p}% - {q}%.", "Net result: a change of {p} minus {q} percent."]),
        ],
    },
    {
        "name": "probability-at-least-one",
        "params": lambda rng: (lambda n: {"n": n, "r": round(1 - (5 / 6) ** n, 4)})(rng.randint(2, 6)),
        "prompt": "A fair die is rolled {n} times. What is the probability of getting at least one six?",
        "answer": "{r}",
        "slots": [
            ("n", ["Each roll is independent and shows a six with probability 1/6.",
                   "The rolls are independent, P(six) = 1/6 on each."]),
            ("k", ["Use the complement: P(at least one six) = 1 - P(no six in any roll).",
                   "It is easier to count the complement event, no six at all, and subtract from 1."],
                  ["Add the probabilities of a six on each roll: {n} * 1/6.",
                   "At least one six means a six on roll 1 or roll 2 or ..., so sum 1/6 over the {n} rolls."]),
            ("n", ["P(no six on one roll) = 5/6.", "The chance of missing a six on a single roll is 5/6."]),
            ("k", ["Because the rolls are independent, P(no six in {n} rolls) = (5/6)^{n}.",
                   "Independence lets me multiply: (5/6)^{n} for no six in all {n} rolls."],
                  ["So the answer is simply 5/6 subtracted once from 1.",
                   "Then the probability of no six is 5/6 regardless of the number of rolls."]),
            ("o", ["P = 1 - (5/6)^{n} ≈ {r}.", "The probability is about {r}."],
                  ["P = {n}/6.", "The probability is 1/6."]),
        ],
    },
    {
        "name": "sum-of-series",
        "params": lambda rng: (lambda n: {"n": n, "s": n * (n + 1) // 2, "sq": n * (n + 1) * (2 * n + 1) // 6})(rng.randint(10, 60)),
        "prompt": "Compute 1^2 + 2^2 + ... + {n}^2.",
        "answer": "{sq}",
        "slots": [
            ("n", ["This is the sum of the first {n} squares.", "We need the sum of squares from 1 to {n}."]),
            ("k", ["Use the closed form n(n + 1)(2n + 1)/6 instead of adding {n} terms by hand.",
                   "Recall the standard formula for the sum of squares, n(n+1)(2n+1)/6."],
                  ["Square the sum 1 + 2 + ... + {n} = {s}, which gives the sum of the squares.",
                   "The sum of squares equals the square of the sum, so compute {s}^2."]),
            ("k", ["Sanity-check the formula on a small case: for n = 2 it gives 2*3*5/6 = 5 = 1 + 4.",
                   "Test the formula on n = 3 first: 3*4*7/6 = 14 = 1 + 4 + 9, so it is right."],
                  ["No need to check the formula on a small case, it is standard.",
                   "I'm confident in this, so I'll skip a small-case check."]),
            ("n", ["Plug in n = {n}.", "Now substitute n = {n}."]),
            ("o", ["The sum is {sq}.", "Answer: {sq}."], ["The sum is {s}^2.", "Answer: {s} squared."]),
        ],
    },
]

# --------------------------------------------------------------------------------- coding

CODING = [
    {
        "name": "binary-search",
        "params": lambda rng: {"fn": rng.choice(["find_index", "search_sorted", "locate"])},
        "prompt": "Write a Python function {fn}(xs, target) that returns the index of target in the sorted list xs, or -1 if it is absent.",
        "answer": "tests: empty list, single element, first/last element, absent target",
        "slots": [
            ("n", ["Since xs is sorted, binary search gives O(log n).",
                   "The list is sorted, so I'll use binary search."]),
            ("k", ["Use a closed interval lo = 0, hi = len(xs) - 1 and loop while lo <= hi, so a one-element range is still examined.",
                   "Keep the loop condition as lo <= hi with hi = len(xs) - 1; with < the last candidate would be skipped."],
                  ["Set lo = 0, hi = len(xs) - 1 and loop while lo < hi.",
                   "Loop while lo < hi, which is enough to narrow down the range."]),
            ("n", ["Compute mid = (lo + hi) // 2 and compare xs[mid] with target.",
                   "mid = (lo + hi) // 2; if xs[mid] == target return mid."]),
            ("k", ["Move the bounds past mid (lo = mid + 1 or hi = mid - 1) so the interval always shrinks and the loop terminates.",
                   "Update with lo = mid + 1 and hi = mid - 1, never lo = mid, otherwise two elements can loop forever."],
                  ["If xs[mid] < target set lo = mid, else hi = mid.",
                   "Update lo = mid when the target is larger, hi = mid otherwise."]),
            ("n", ["Return -1 after the loop if the target was not found.", "If the loop ends, return -1."]),
            ("o", ["All tests pass, including the empty list and a single-element list.", "Tests: 12/12 passed."],
                  ["The test with a single-element list fails.", "Tests: 7/12 passed; the run times out on a two-element list."]),
        ],
    },
    {
        "name": "parse-csv",
        "params": lambda rng: {"col": rng.choice(["amount", "price", "total"])},
        "prompt": "Write a function that reads a CSV file and returns the sum of the '{col}' column. Some rows have quoted fields that contain commas.",
        "answer": "tests with quoted commas and a header",
        "slots": [
            ("n", ["I'll open the file and iterate over its rows.", "Open the file with a context manager."]),
            ("k", ["Use the csv module (csv.DictReader) rather than line.split(','), because quoted fields may contain commas.",
                   "Parse with csv.DictReader so quoted fields with embedded commas are handled correctly."],
                  ["Split each line on ',' to get the fields.", "line.split(',') gives the columns; index the {col} column."]),
            ("k", ["Open the file with newline='' as the csv docs require, so embedded newlines in quoted fields survive.",
                   "Pass newline='' to open() for the csv reader; otherwise quoted line breaks are mangled."],
                  ["Open it with the default settings.", "A plain open(path) is fine here."]),
            ("n", ["Convert the {col} field to float and add it to a running total.",
                   "Accumulate float(row['{col}']) into total."]),
            ("o", ["All 9 tests pass, including the quoted-comma rows.", "Tests: 9/9 passed."],
                  ["Tests: 5/9 passed; rows with quoted commas give a ValueError.", "The quoted-field test fails with could not convert string to float."]),
        ],
    },
    {
        "name": "lru-cache",
        "params": lambda rng: {"cap": rng.choice([2, 3, 100])},
        "prompt": "Implement an LRUCache class with get(key) and put(key, value), capacity {cap}, both O(1).",
        "answer": "tests on eviction order",
        "slots": [
            ("n", ["I need O(1) get and put with eviction of the least recently used key.",
                   "The cache must evict the least recently used entry when full."]),
            ("k", ["Use collections.OrderedDict and call move_to_end(key) on every get, so reads refresh recency too.",
                   "On get, move the key to the end of the OrderedDict; a read counts as a use."],
                  ["Use an OrderedDict; get just returns the value.", "get(key) returns self.data.get(key, -1) without touching the order."]),
            ("k", ["On put of an existing key, update it and move it to the end before checking capacity, so no entry is evicted needlessly.",
                   "When put overwrites a key, refresh its position first and only evict if the size exceeds capacity."],
                  ["On put, evict the oldest entry whenever the cache is at capacity, then insert.",
                   "If len(cache) == capacity, pop the first item, then set the key."]),
            ("n", ["Evict with popitem(last=False) when the size exceeds {cap}.", "popitem(last=False) removes the least recent entry."]),
            ("o", ["All eviction-order tests pass.", "Tests: 15/15 passed."],
                  ["Tests: 11/15 passed; the wrong key is evicted after a get.", "Eviction-order test fails: expected key 1 to survive."]),
        ],
    },
    {
        "name": "fix-flaky-test",
        "params": lambda rng: {"mod": rng.choice(["scheduler", "cache_warmer", "report_job"])},
        "prompt": "The test test_{mod}_runs in our suite fails about one run in ten. Find the cause and fix it.",
        "answer": "the test passes 200/200 runs",
        "slots": [
            ("n", ["I'll read the test and the code under test first.", "Let me look at test_{mod}_runs and {mod}.py."]),
            ("k", ["Reproduce the failure first by running the test in a loop (pytest --count=200) before changing anything.",
                   "Run the test 200 times to reproduce the flakiness reliably before touching the code."],
                  ["The failure is probably timing related, so I'll increase the sleep in the test.",
                   "Add time.sleep(1) before the assertion; that should make it stable."]),
            ("k", ["The test depends on wall-clock time; inject a fake clock into {mod} so the test is deterministic.",
                   "Replace the call to time.time() in {mod} with an injected clock and drive it from the test."],
                  ["Mark the test with a retry decorator so it reruns on failure.",
                   "Wrap the assertion in a retry loop of three attempts."]),
            ("n", ["Update the test to use the new parameter.", "Adjust the test accordingly."]),
            ("o", ["The test now passes 200/200 runs.", "200 of 200 runs pass."],
                  ["The test still fails 6 of 200 runs.", "Still flaky: 9/200 failures."]),
        ],
    },
]

# ---------------------------------------------------------------------------------- web

WEB = [
    {
        "name": "population-lookup",
        "params": lambda rng: {"city": rng.choice(["Lyon", "Porto", "Leipzig", "Graz", "Turku"]), "year": rng.choice([2019, 2021, 2022])},
        "prompt": "What was the population of {city} in {year}? Cite your source.",
        "answer": "official statistics office figure for {year}",
        "slots": [
            ("n", ["Search: '{city} population {year}'.", "I'll search for the {city} population in {year}."]),
            ("k", ["Prefer the national statistics office over aggregator sites, and open the page for {year} itself rather than the latest estimate.",
                   "Go to the official statistics office table and pick the {year} row, not the most recent figure."],
                  ["The first search result, a city-guide website, gives a population figure.",
                   "Take the number from the snippet of the top result."]),
            ("k", ["Check whether the figure is for the city proper or the metropolitan area, since the question asks about the city.",
                   "Distinguish city proper from metro area: the two numbers differ by a factor of two or more."],
                  ["The figure quoted is large enough, so it must be the city.",
                   "Use whatever figure appears first."]),
            ("n", ["Note the URL for the citation.", "Record the source link."]),
            ("o", ["Answer: the official {year} figure for {city} proper, citing the statistics office.", "Population of {city} (city proper, {year}) from the national statistics office."],
                  ["Answer: the metro area estimate from a travel site.", "Population taken from a city-guide page (no year given)."]),
        ],
    },
    {
        "name": "paper-claim",
        "params": lambda rng: {"topic": rng.choice(["sparse attention", "retrieval-augmented generation", "low-rank adapters", "speculative decoding"])},
        "prompt": "Does the original paper on {topic} report results on long documents? Answer yes or no with evidence.",
        "answer": "quote from the experiments section",
        "slots": [
            ("n", ["Search for the original paper on {topic}.", "Look up the paper that introduced {topic}."]),
            ("k", ["Read the experiments section of the paper itself instead of relying on blog summaries.",
                   "Open the PDF and check the experiments and appendix directly; secondary summaries often misreport."],
                  ["A blog post summarising the paper says it covers long documents.",
                   "According to a summary on a news site, the paper evaluates long inputs."]),
            ("k", ["Quote the exact sentence and table that support the answer, so the claim can be verified.",
                   "Cite the specific table and its caption as evidence."],
                  ["The answer seems clear enough without a quote.", "No need to quote, the summary is enough."]),
            ("n", ["Compose the answer.", "Write up the result."]),
            ("o", ["Answer with a quoted sentence from the experiments section.", "Yes/no answer supported by Table 3 of the paper."],
                  ["Answer based on the blog summary.", "Answer without direct evidence."]),
        ],
    },
    {
        "name": "conflicting-dates",
        "params": lambda rng: {"event": rng.choice(["the opening of the Gotthard Base Tunnel", "the first flight of the A380", "the launch of the Hubble telescope"])},
        "prompt": "When did {event} happen? Sources disagree; give the correct date.",
        "answer": "primary-source date",
        "slots": [
            ("n", ["Search for the date of {event}.", "Look up {event}."]),
            ("k", ["Sources disagree, so compare at least three independent ones and explain the discrepancy (announcement vs actual date).",
                   "When dates conflict, cross-check several independent sources and find out what each date refers to."],
                  ["The first source gives a date, I'll use it.", "Go with the date in the top search result."]),
            ("k", ["Prefer a primary source (the operator's press release or official record) over encyclopedic summaries.",
                   "Check the official press release from the time; it is the primary record."],
                  ["The encyclopedia summary is reliable enough.", "An online encyclopedia is a good enough source."]),
            ("o", ["The correct date is the one in the official record; the other date is the ceremonial announcement.", "Answer: the primary-source date, with the discrepancy explained."],
                  ["Answer: the date from the first result.", "Answer given without resolving the conflict."]),
        ],
    },
]

# ------------------------------------------------------------------------------- science

SCIENCE = [
    {
        "name": "unit-conversion",
        "params": lambda rng: (lambda v, t: {"v": v, "t": t, "d": round(v / 3.6 * t, 1)})(rng.choice([36, 54, 72, 90, 108]), rng.randint(5, 40)),
        "prompt": "A car moves at {v} km/h for {t} seconds. How far does it travel in metres?",
        "answer": "{d} m",
        "slots": [
            ("n", ["Distance = speed × time.", "Use d = v t."]),
            ("k", ["Convert units before multiplying: {v} km/h = {v}/3.6 m/s, so the time in seconds matches.",
                   "Bring the speed into SI units first: divide km/h by 3.6 to get m/s."],
                  ["Multiply {v} by {t} directly.", "d = {v} × {t}, then read it as metres."]),
            ("k", ["Check the dimensions of the result: (m/s) × s = m, as required.",
                   "Track the units through the calculation so the answer comes out in metres."],
                  ["The units should work out.", "Units aside, the number is what matters."]),
            ("o", ["d ≈ {d} m.", "The car travels about {d} metres."], ["d = {v} × {t} m.", "About {v}{t} metres."]),
        ],
    },
    {
        "name": "dilution",
        "params": lambda rng: (lambda c1, v2, c2: {"c1": c1, "v2": v2, "c2": c2, "v1": round(c2 * v2 / c1, 1)})(rng.choice([2.0, 5.0, 10.0]), rng.choice([100, 250, 500]), rng.choice([0.5, 1.0])),
        "prompt": "How much of a {c1} M stock solution do you need to make {v2} mL of a {c2} M solution?",
        "answer": "{v1} mL",
        "slots": [
            ("n", ["This is a dilution problem.", "We are diluting a stock solution."]),
            ("k", ["Use conservation of moles: C1 V1 = C2 V2, so V1 = C2 V2 / C1.",
                   "The number of moles of solute is the same before and after dilution: C1V1 = C2V2."],
                  ["Scale the volume by the concentration ratio: V1 = V2 × C1 / C2.",
                   "V1 = {v2} × {c1} / {c2}, since a stronger stock means more volume."]),
            ("k", ["Sanity check: the stock is more concentrated, so V1 must be smaller than {v2} mL.",
                   "Check the answer is plausible: a concentrated stock needs less than the final volume."],
                  ["The result looks reasonable.", "That should be right."]),
            ("o", ["V1 = {v1} mL of stock, topped up to {v2} mL.", "Take {v1} mL of the stock."],
                  ["V1 is larger than {v2} mL.", "Take {c1} × {v2} / {c2} mL of stock."]),
        ],
    },
    {
        "name": "experiment-design",
        "params": lambda rng: {"drug": rng.choice(["fertiliser A", "a new enzyme inhibitor", "supplement X"]), "out": rng.choice(["plant height", "growth rate", "yield"])},
        "prompt": "Design an experiment to test whether {drug} affects {out}.",
        "answer": "controlled, randomised, blinded design",
        "slots": [
            ("n", ["We want to compare {out} with and without {drug}.", "The outcome is {out}."]),
            ("k", ["Include a control group that receives a placebo or no treatment, otherwise there is nothing to compare against.",
                   "Set up a control group treated identically except for {drug}."],
                  ["Give {drug} to all subjects and measure {out} afterwards.",
                   "Apply {drug} to every sample and record {out}."]),
            ("k", ["Randomise assignment to treatment and control to avoid selection bias.",
                   "Assign subjects to groups at random so confounders balance out."],
                  ["Put the healthiest subjects in the treatment group so the effect is visible.",
                   "Choose which subjects get {drug} by hand."]),
            ("n", ["Measure {out} after a fixed period.", "Record {out} at the end."]),
            ("o", ["The design isolates the effect of {drug}.", "This design allows a causal conclusion."],
                  ["The design cannot separate the effect of {drug} from other factors.", "Any difference could be due to selection."]),
        ],
    },
]

# ------------------------------------------------------------------------- agents / tools

AGENTS = [
    {
        "name": "weather-tool",
        "params": lambda rng: {"city": rng.choice(["Oslo", "Madrid", "Nairobi", "Denver"]), "day": rng.choice(["tomorrow", "on Saturday"])},
        "prompt": "Will I need an umbrella in {city} {day}?",
        "answer": "uses forecast for the right date",
        "tool": "get_forecast",
        "slots": [
            ("n", ["I'll check the weather forecast for {city}.", "Let me look up the forecast for {city}."]),
            ("k", ["First resolve '{day}' to a concrete date from the current date, then request the forecast for that date.",
                   "Convert the relative day '{day}' into an explicit date before calling the forecast tool."],
                  ["Call the forecast tool for {city} with no date.", "Get the current weather in {city}."]),
            ("k", ["Read the precipitation probability field from the tool result instead of guessing from the summary text.",
                   "Use the precipitation probability in the tool output to decide, not the one-word summary."],
                  ["The summary says 'cloudy', so no rain.", "It says cloudy, which means dry."]),
            ("o", ["Yes, take an umbrella: rain is likely that day.", "Rain probability is high, bring an umbrella."],
                  ["No umbrella needed.", "It'll be dry, no umbrella."]),
        ],
    },
    {
        "name": "file-edit-agent",
        "params": lambda rng: {"fn": rng.choice(["parse_date", "load_config", "compute_total"]), "file": rng.choice(["utils.py", "core.py", "helpers.py"])},
        "prompt": "Rename the function {fn} to {fn}_v2 everywhere in the repository.",
        "answer": "all call sites updated, tests green",
        "tool": "shell",
        "slots": [
            ("n", ["I'll find where {fn} is defined.", "Let me locate the definition of {fn}."]),
            ("k", ["Search the whole repository for every reference with grep -rn '{fn}' before editing, including imports and tests.",
                   "List all call sites first (grep -rn '{fn}' .) so none is missed."],
                  ["Edit the definition in {file}.", "Rename {fn} in {file}, where it is defined."]),
            ("k", ["Run the test suite after the edit to confirm nothing still refers to the old name.",
                   "After renaming, run the tests to catch any remaining reference."],
                  ["The rename is done, no need to run the tests.", "That should be all; skipping the tests."]),
            ("o", ["Renamed in all files; the tests pass.", "Done: every reference updated and tests green."],
                  ["Renamed in {file}; tests fail with NameError.", "ImportError: cannot import name '{fn}'."]),
        ],
    },
    {
        "name": "api-pagination",
        "params": lambda rng: {"res": rng.choice(["issues", "orders", "users"])},
        "prompt": "Count all open {res} using the API tool.",
        "answer": "count across all pages",
        "tool": "http_get",
        "slots": [
            ("n", ["Call the API to list open {res}.", "Fetch the list of open {res}."]),
            ("k", ["The response is paginated: follow the next link until it is empty instead of counting only the first page.",
                   "Check the response for a next-page cursor and keep requesting pages until there is none."],
                  ["Count the items in the response.", "The response has 100 items, so that's the count."]),
            ("k", ["Handle rate limiting: when the tool returns 429, wait for the Retry-After time and retry the same page.",
                   "On an HTTP 429 reply, back off for the Retry-After seconds and retry rather than stopping."],
                  ["The tool returned an error on page 3, so stop there.", "Got a 429, I'll report what I have."]),
            ("o", ["Total open {res}: the sum over all pages.", "Counted every page: the full total."],
                  ["There are 100 open {res}.", "Count: 100 (first page only)."]),
        ],
    },
]

DOMAINS = [("math", MATH), ("coding", CODING), ("web-research", WEB), ("science", SCIENCE), ("agents", AGENTS)]


def _pick(rng: random.Random, variants: list[str], params: dict) -> str:
    return rng.choice(variants).format(**params)


def _steps_for(rng, template, params, good_mask):
    """(steps, good_step_indices) for one attempt; good_mask[i] for the i-th key slot."""
    steps: list[str] = []
    good_idx: list[int] = []
    key_i = 0
    success = all(good_mask)
    for slot in template["slots"]:
        kind = slot[0]
        if kind == "n":
            steps.append(_pick(rng, slot[1], params))
        elif kind == "k":
            ok = good_mask[key_i]
            key_i += 1
            if ok and success:
                good_idx.append(len(steps))
            steps.append(_pick(rng, slot[1] if ok else slot[2], params))
        else:
            steps.append(_pick(rng, slot[1] if success else slot[2], params))
        if rng.random() < 0.15:  # model chatter, in good and bad attempts alike
            steps.append(rng.choice(FILLER))
    return steps, good_idx


def _masks(rng: random.Random, n_keys: int, no_signal: bool) -> list[list[bool]]:
    """Key-step correctness of each attempt: >= 1 success and >= 1 failure per task."""
    if no_signal:  # every attempt fails: a group without signal, as happens in real batches
        return [[rng.random() < 0.5 for _ in range(n_keys - 1)] + [False] for _ in range(4)]
    masks = [[True] * n_keys, [False] * n_keys]
    while len(masks) < ROLLOUTS_PER_TASK:
        if rng.random() < 0.4:
            masks.append([True] * n_keys)
        else:
            m = [rng.random() < 0.5 for _ in range(n_keys)]
            m[rng.randrange(n_keys)] = False
            masks.append(m)
    rng.shuffle(masks)
    return masks


def _reward(domain: str, mask: list[bool], rng: random.Random) -> float:
    if all(mask):
        return 1.0
    if domain == "coding":  # fraction of unit tests passed
        return round(sum(mask) / len(mask) * rng.uniform(0.3, 0.6), 2)
    return 0.0


def _chat(template, params, steps, rng) -> list[dict]:
    """An OpenAI-style trajectory: each step an assistant turn, tool calls and results between."""
    tool = template["tool"]
    msgs: list[dict] = [
        {"role": "system", "content": f"You are an agent with access to the tool `{tool}`."},
        {"role": "user", "content": template["prompt"].format(**params)},
    ]
    for i, step in enumerate(steps):
        call_id = f"call_{i}"
        msgs.append(
            {
                "role": "assistant",
                "content": step,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": tool, "arguments": json.dumps({"step": i})},
                    }
                ],
            }
        )
        msgs.append({"role": "tool", "tool_call_id": call_id, "content": '{"status": "ok"}'})
    return msgs


def generate(domains=None, seed: int = SEED) -> dict[str, list[dict]]:
    """Rollouts per domain; `domains` defaults to DOMAINS (heldout/generate.py passes its own)."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    for domain, templates in domains or DOMAINS:
        rows: list[dict] = []
        for template in templates:
            n_keys = sum(1 for s in template["slots"] if s[0] == "k")
            for inst in range(INSTANCES_PER_TEMPLATE):
                params = template["params"](rng)
                task_id = f"{domain}/{template['name']}/{inst}"
                no_signal = inst == 2 and template is templates[0]
                for ri, mask in enumerate(_masks(rng, n_keys, no_signal)):
                    steps, good = _steps_for(rng, template, params, mask)
                    reward = _reward(domain, mask, rng)
                    if "tool" in template:
                        response: object = _chat(template, params, steps, rng)
                    else:
                        response = "\n".join(steps)
                    rows.append(
                        {
                            "task_id": task_id,
                            "prompt": template["prompt"].format(**params),
                            "response": response,
                            "reward": reward,
                            "ground_truth": template["answer"].format(**params),
                            "domain": domain,
                            "meta": {
                                "good_steps": good,
                                "sample": ri,
                                "template": template["name"],
                                # the instance's values: a lesson naming one is task-specific
                                "params": sorted({str(v) for v in params.values()}),
                            },
                        }
                    )
        out[domain] = rows
    return out


def write(rows_by_domain: dict[str, list[dict]], folder: Path) -> None:
    for domain, rows in rows_by_domain.items():
        path = folder / f"{domain}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        print(f"{path.name}: {len(rows)} rollouts")


def main() -> None:
    write(generate(), HERE)


if __name__ == "__main__":
    main()
