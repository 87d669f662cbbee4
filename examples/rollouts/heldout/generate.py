"""Held-out rollouts for `dsonode bench extract`: new task templates, another seed.

`python generate.py` writes heldout/*.jsonl with the machinery of ../generate.py (same slot
format, same rewards, same filler), but from templates the offline extractor was never tuned
on and with SEED below instead of the examples' 20261123. These templates were written and
committed before the extractor's generalisation rules were written, and the extractor was
tuned on ../*.jsonl only (BENCHMARKS.md `## extract` says how the two were kept apart).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from generate import generate, write  # noqa: E402  (the examples' generator, one folder up)

SEED = 7730411

MATH = [
    {
        "name": "quadratic-roots",
        "params": lambda rng: (lambda r, s: {"b": -(r + s), "c": r * s, "r": r, "s": s})(
            rng.randint(1, 6), rng.randint(7, 12)
        ),
        "prompt": "Find both roots of y^2 + ({b})y + {c} = 0.",
        "answer": "y = {r} and y = {s}",
        "slots": [
            ("n", ["This is a quadratic in y.", "We have a monic quadratic equation in y."]),
            ("k", ["Look for two numbers whose product is {c} and whose sum is {b}: here -{r} and -{s}, so the quadratic factors.",
                   "Factor by finding a pair with product {c} and sum {b}; (y - {r})(y - {s}) expands back to the original."],
                  ["Use y = -b/2 as the root, since that is where the parabola turns.",
                   "The root is y = {b}/2 by symmetry."]),
            ("k", ["Expand the factored form again to confirm it reproduces y^2 + ({b})y + {c}.",
                   "Multiply the factors back out and compare every coefficient with the original equation."],
                  ["The factoring looks right, no need to expand it again.",
                   "Skip the check; the factors are obviously correct."]),
            ("o", ["The roots are y = {r} and y = {s}.", "y = {r} or y = {s}."],
                  ["The only root is y = {b}/2.", "y = {b}/2 (a double root)."]),
        ],
    },
    {
        "name": "average-speed",
        "params": lambda rng: (lambda u, v: {"u": u, "v": v, "h": round(2 * u * v / (u + v), 2)})(
            rng.choice([30, 40, 60]), rng.choice([20, 80, 90])
        ),
        "prompt": "Maria drives to the coast at {u} km/h and back home along the same road at {v} km/h. What is her average speed for the round trip?",
        "answer": "{h} km/h",
        "slots": [
            ("n", ["Let the one-way distance be D.", "Call the distance each way D."]),
            ("k", ["Average speed is total distance over total time, so compute the time of each leg: D/{u} and D/{v}.",
                   "Divide the whole distance 2D by the whole time D/{u} + D/{v}, since average speed is distance over time."],
                  ["Average the two speeds: ({u} + {v}) / 2.",
                   "Take the arithmetic mean of {u} and {v} km/h."]),
            ("k", ["Notice the slower leg takes longer, so the answer must lie below the simple mean of {u} and {v}.",
                   "Sanity check: more time is spent at the lower speed, so the result is less than the arithmetic mean."],
                  ["The mean is the natural answer here.", "No check needed, averaging speeds is standard."]),
            ("o", ["Her average speed is {h} km/h.", "Average speed: {h} km/h."],
                  ["Her average speed is ({u} + {v})/2 km/h.", "The mean of {u} and {v}."]),
        ],
    },
]

CODING = [
    {
        "name": "dedupe-preserve-order",
        "params": lambda rng: {"fn": rng.choice(["unique_emails", "dedupe_ids", "distinct_tags"]), "arg": rng.choice(["items", "records", "values"])},
        "prompt": "Write {fn}({arg}) that removes duplicates from a list while keeping the first occurrence order.",
        "answer": "tests on order and unhashable-free inputs",
        "slots": [
            ("n", ["I'll iterate over {arg} once.", "A single pass over {arg} is enough."]),
            ("k", ["Track seen elements in a set and append to the result only on first sight, so order is kept and lookups stay O(1).",
                   "Keep a `seen` set beside the output list in {fn}; membership tests in a set are constant time."],
                  ["Return list(set({arg})), which removes duplicates.",
                   "Convert {arg} to a set and back to a list."]),
            ("k", ["Add a test where duplicates are not adjacent, e.g. [3, 1, 3, 2, 1], to prove first-occurrence order.",
                   "Test with non-adjacent repeats so that a sort-based solution would fail the order check."],
                  ["Test with [1, 1, 2, 2] only.", "One test with adjacent duplicates is enough."]),
            ("o", ["All 8 tests pass.", "Tests: 8/8 passed."], ["Tests: 5/8 passed; the order test fails.", "The order of {arg} is scrambled in 3 tests."]),
        ],
    },
    {
        "name": "timezone-bug",
        "params": lambda rng: {"svc": rng.choice(["billing", "reminders", "payroll"]), "tz": rng.choice(["Europe/Berlin", "America/Chicago", "Asia/Tokyo"])},
        "prompt": "Users of the {svc} service in {tz} get their daily email one hour late after the clocks change. Fix it.",
        "answer": "emails at local 08:00 across the DST change",
        "slots": [
            ("n", ["I'll read the {svc} scheduler code.", "Let me open the {svc} job definition."]),
            ("k", ["Store the schedule as a local wall-clock time plus the zone name '{tz}' and convert to UTC for each run, not once at creation.",
                   "Keep times in UTC internally but compute each next run from the user's zone with zoneinfo, so daylight saving shifts are applied."],
                  ["Add one hour to the stored UTC time for {tz} users.",
                   "Hard-code a +1 h offset for {tz} during summer."]),
            ("k", ["Write a test that crosses the daylight-saving boundary with a fixed clock and asserts the local send time.",
                   "Add a regression test pinned to the night of the clock change, using a frozen clock."],
                  ["Test it manually tomorrow morning.", "It works on my machine today, no test needed."]),
            ("o", ["Emails arrive at 08:00 local time before and after the change.", "Tests pass across the transition."],
                  ["Emails are still late for {tz} users in winter.", "Off by one hour again after the change back."]),
        ],
    },
]

WEB = [
    {
        "name": "company-founding",
        "params": lambda rng: {"co": rng.choice(["Nokia", "Lego", "Ikea", "Philips"])},
        "prompt": "In which year was {co} founded? Give a reliable source.",
        "answer": "founding year from the company's own history page",
        "slots": [
            ("n", ["Search for '{co} founded'.", "Look up when {co} was founded."]),
            ("k", ["Check the company's own history page and an independent archive, because {co} changed its business over the years and dates get mixed up.",
                   "Distinguish the founding of the original business from later incorporations or renamings; {co} has several candidate dates."],
                  ["The first snippet gives a year, take it.", "Use the year in the top search snippet."]),
            ("k", ["Cite the page that states the year explicitly, with its title, so a reader can verify it.",
                   "Give the URL and the sentence that states the founding year."],
                  ["Cite 'the internet'.", "No citation needed for a well-known fact."]),
            ("o", ["{co} was founded in the year stated on its history page.", "Answer with the primary-source year for {co}."],
                  ["{co} was founded in the year from the snippet.", "A year is given without a source."]),
        ],
    },
    {
        "name": "statistic-freshness",
        "params": lambda rng: {"metric": rng.choice(["unemployment rate", "inflation rate", "median rent"]), "region": rng.choice(["Catalonia", "Bavaria", "Ontario"])},
        "prompt": "What is the latest {metric} in {region}?",
        "answer": "most recent official release with its date",
        "slots": [
            ("n", ["Search for the {metric} of {region}.", "Look up '{region} {metric}'."]),
            ("k", ["Check the publication date of every figure and prefer the most recent official release over older news articles.",
                   "Compare the dates of the sources; news pieces often quote last year's {metric}."],
                  ["A news article from 2019 gives the {metric}.", "Use the first number found."]),
            ("k", ["State the reference period of the figure (month or quarter) along with the number.",
                   "Say which period the {metric} refers to, not only its value."],
                  ["Give just the number.", "The period does not matter."]),
            ("o", ["The latest official {metric} for {region}, with its period and source.", "Answer with the most recent release and its date."],
                  ["An outdated figure for {region}.", "A number without a date."]),
        ],
    },
]

SCIENCE = [
    {
        "name": "ideal-gas",
        "params": lambda rng: (lambda t1, t2, p1: {"t1": t1, "t2": t2, "p1": p1, "p2": round(p1 * (t2 + 273.15) / (t1 + 273.15), 1)})(
            rng.choice([20, 25, 27]), rng.choice([80, 100, 120]), rng.choice([100, 200])
        ),
        "prompt": "A sealed rigid tank holds gas at {p1} kPa and {t1} °C. What is the pressure at {t2} °C?",
        "answer": "{p2} kPa",
        "slots": [
            ("n", ["The volume is fixed, so pressure is proportional to temperature.", "Rigid tank: constant volume."]),
            ("k", ["Convert both temperatures to kelvin first ({t1} °C = {t1} + 273.15 K) because the gas laws need absolute temperature.",
                   "Use absolute temperatures: add 273.15 to each Celsius value before taking the ratio."],
                  ["Scale the pressure by {t2}/{t1}.", "p2 = {p1} × {t2} / {t1}."]),
            ("k", ["Check that the result is only moderately larger than {p1} kPa, as a modest change in absolute temperature implies.",
                   "Sanity check: the kelvin ratio is close to 1, so the pressure should rise by tens of percent, not multiply."],
                  ["A large jump in pressure is expected.", "The answer looks fine."]),
            ("o", ["p2 ≈ {p2} kPa.", "The pressure becomes about {p2} kPa."], ["p2 = {p1} × {t2}/{t1} kPa.", "About four times {p1} kPa."]),
        ],
    },
    {
        "name": "sample-size",
        "params": lambda rng: {"plant": rng.choice(["tomato seedlings", "wheat plots", "basil pots"]), "n": rng.choice([3, 4, 5])},
        "prompt": "We grew {n} {plant} under LED light and {n} under sunlight. The LED group is taller. Can we conclude that LED light works better?",
        "answer": "not without replication and a significance test",
        "slots": [
            ("n", ["The LED group has a higher mean height.", "The difference in means favours LED."]),
            ("k", ["With only {n} {plant} per group, random variation can explain the gap; run a significance test before concluding anything.",
                   "Estimate the variability within each group and test whether the difference exceeds it, because small samples mislead."],
                  ["The LED group is taller, so LED works better.", "A taller mean is proof enough."]),
            ("k", ["Ask whether other factors (water, temperature, position) differed between groups, since they confound the light effect.",
                   "Make sure the groups differed only in the light source; otherwise another variable could explain the heights."],
                  ["Other conditions do not matter here.", "Ignore the other growing conditions."]),
            ("o", ["Not yet: the evidence is too weak without replication.", "No firm conclusion; more replicates are needed."],
                  ["Yes, LED light is better.", "LED clearly wins."]),
        ],
    },
]

AGENTS = [
    {
        "name": "calendar-booking",
        "params": lambda rng: {"who": rng.choice(["Priya", "Tomasz", "Aiko"]), "dur": rng.choice([30, 45, 60])},
        "prompt": "Book a {dur}-minute meeting with {who} next week.",
        "answer": "a free slot in both calendars, invite sent",
        "tool": "calendar",
        "slots": [
            ("n", ["I'll look at the calendars.", "Let me open the calendar tool."]),
            ("k", ["Query the free/busy times of both {who} and the user for next week before proposing a slot.",
                   "Fetch availability for every attendee first and intersect it, instead of picking a time from one calendar."],
                  ["Book Monday 9:00, it is usually free.", "Create the event at the first slot in my own calendar."]),
            ("k", ["Read back the created event from the tool to confirm the time zone and attendees were saved.",
                   "After creating the event, fetch it again and check the attendee list and time zone."],
                  ["The tool said ok, so it is booked.", "Assume the invite went out."]),
            ("o", ["Booked: {dur} minutes with {who}, invite accepted by the tool.", "Meeting created and verified."],
                  ["Booked over one of {who}'s existing meetings.", "The event has no attendees."]),
        ],
    },
    {
        "name": "log-triage",
        "params": lambda rng: {"svc": rng.choice(["checkout-api", "auth-gateway", "search-indexer"]), "code": rng.choice(["502", "503", "504"])},
        "prompt": "The {svc} service returns HTTP {code} since this morning. Find out why using the log tool.",
        "answer": "root cause found in the earliest error",
        "tool": "logs",
        "slots": [
            ("n", ["I'll query the logs of {svc}.", "Let me search the {svc} logs."]),
            ("k", ["Narrow the time window to when the errors started and find the earliest error, not the most frequent one.",
                   "Sort the errors by time and read the first one after the last healthy request; later errors are often consequences."],
                  ["The most common message is a timeout, so that is the cause.", "Grep for '{code}' and report the count."]),
            ("k", ["Correlate the start time with recent deploys or config changes before blaming the code.",
                   "Check the deploy history for a change just before the first error."],
                  ["It must be a network issue.", "Restart {svc} and see if it helps."]),
            ("o", ["Root cause: a config change at the first error's time.", "The first error points to the deploy that broke it."],
                  ["Cause unknown; timeouts everywhere.", "Restarted {svc}; errors came back."]),
        ],
    },
]

HELDOUT = [("math", MATH), ("coding", CODING), ("web-research", WEB), ("science", SCIENCE), ("agents", AGENTS)]


def main() -> None:
    random.seed(SEED)  # only `generate`'s own seeded RNG is used; this guards stray calls
    write(generate(HELDOUT, SEED), HERE)


if __name__ == "__main__":
    main()
