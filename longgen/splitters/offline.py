"""A rule-based splitter that needs no network and no model. It is rough: it follows the structured-prompt rules
of SynCoS (supplementary Fig. 8) as far as string rules can, and always returns a valid story with exactly N local
prompts.

1. Sentences are cut at . ! ? ; and then at connectives ("then", "and then", "after that", ", finally", ...);
   a sentence opening with "After X, Y" becomes X then Y. Each piece with a verb (a lexicon of common action verbs
   and their inflections) is an event; pieces without a verb are description and go into the global prompt.
2. The subject is the noun phrase before the first verb of the first event; the first place phrase after a
   verb is the setting ("in/on/at/under/near …"; a path such as "across a field" is written "on a field"). Global prompt = subject, setting, description.
   When the subject is the camera, the place the camera looks at is the global subject instead.
3. In each event, a leading pronoun (he/she/it/they, his/her/its/their) or a missing subject ("and sniffs the
   air") becomes the subject with "the" ("the red fox"); a repeat of the full subject phrase is shortened the same
   way. A story told only with pronouns gets an indefinite subject ("He runs" -> "A man", "the man").
4. Exactly N: too many events are merged (the neighbouring pair with the fewest words, joined by ", then");
   too few are split further at "and <verb>" or ", <verb>", and if still too few, events are repeated in stages
   (", continuing", ", finishing").
5. Local prompt i = global prompt + " " + event i, so every local prompt contains the global one. Same input,
   same output.
6. Multi-shot form (`split_shots`, LCT §3.2.1): the subject phrase is "Character 1", the setting and description
   are the environment, and each event is a shot naming "Character 1"; shots after the first start with a cut.
7. A scenario in another language (no English verb, none of English's commonest words; sentences also end at
   。！？；): each sentence is an event and the first sentence, where a story introduces its subject and place, is
   the global prompt. Too many sentences are merged (the neighbouring pair with the fewest characters), too few
   are repeated, earlier ones first; the words of rule 4 are English, so nothing is added to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from longgen.splitters.base import Splitter, check_num_prompts, check_scenario
from longgen.story import SENTENCE_ENDS, Story, ends_full_width

_BASE_VERBS = """
appear approach arrive ascend bark bend bite blink bloom blossom blow bounce bow break breathe brighten build burn
burst carry catch chase chew chop circle clap climb close collapse collide crack crash crawl cross crumble cry
curl dance darken dart descend dig dim disappear dissolve dive drag drift drink drip drive drop dry eat emerge
enter erupt evaporate expand explode extend fade fall fill flap flash flee flicker float flood flow flutter fly
fold follow form freeze gallop gather gaze glide glow grab graze grin grow hang hatch hold hop hover howl hug hunt
ignite jog jump kick kiss kneel land laugh launch lay lean leap leave lick lift light look march melt morph move
nod open orbit paddle paint pan pass pause peck peek pick pile play plunge point pounce pour pull punch push race
rain reach read rearrange recede reflect reveal ride rise roar roll rotate run rush sail scatter scramble scurry
settle shake shatter shift shine shiver shoot shout shrink sing sink sip sit skate ski skid skip sleep slide slip
slow smash smile sniff snow soar spark sparkle speed spill spin splash split spray spread sprint sprout squeeze
stand stare start step stir stop stretch stride stroll stumble surf surge swallow sway sweep swim swing swirl take
tear throw tilt tiptoe topple toss touch transform travel tremble trot tumble turn twirl twist unfold vanish wade
wag wait wake walk wander wash watch wave weave whirl whisper widen wiggle wilt wink wipe wither wobble write yawn
zoom become begin cook drink eat open pour stir taste wrap bake cut slice fry boil hammer sew knit carve sculpt
place put set bat peer fold unfold toss brush comb feed pet paw scratch sniff nuzzle purr chirp tweet hum
applaud arrange assemble balance blur bubble cascade change cheer cling coil crouch dash dim dodge
drizzle dribble escape fetch fidget fizz flare flip flick flinch fling flock
focus frown gleam glimmer glisten glitter grip gush hurry illuminate jiggle juggle kneel knock lower lurch
mix nibble observe overflow pace pant patrol perch pirouette pluck pop prance prowl rattle reappear
recline release rest return ripple rumble rustle salute scan scoop scoot scurry search shimmer shrug shuffle sigh
skim skitter slam slither smolder snap sneak soak speak spiral sprinkle squat stack stagger stomp
stray strike strum stumble swarm swoop tap teeter throb tickle trickle trudge tug twinkle
unroll unwrap vibrate wander whip whistle wiggle wobble wriggle zigzag
"""
#: mostly nouns or adjectives in scene descriptions ("a steam train", "thick snow"); verbs only when inflected
#: ("water pools", "the sky lights up", "it snowed")
_INFLECTED_ONLY = """
light rain snow steam smoke storm flower spark fish echo duck fan charge tip plant trace press wind pool dust
blossom shimmer glow dim open close slow dry warm cool stack film frame shot
"""
_IRREGULAR = """
is are was were am be been being has have had does did ran swam flew fell rose sat stood ate drank threw caught
began broke came went took gave saw grew drew drove rode wrote spun sang shook woke hid held left led slid struck
sprang stole bit blew froze burst split spread cut hit lit bent built dug felt found got hung kept knelt leapt lay
made met put read sent set shone shot shut slept sped swung tore wore won wound become became begun flown fallen
risen eaten drunk thrown broken taken given seen grown drawn driven ridden written sung shaken woken hidden
"""


def _forms(base: str) -> set[str]:
    forms = {base}
    if base.endswith("y") and base[-2:-1] not in tuple("aeiou"):
        forms |= {base[:-1] + "ies", base[:-1] + "ied", base + "ing"}
        return forms
    forms.add(base + "es" if base.endswith(("s", "sh", "ch", "x", "z", "o")) else base + "s")
    if base.endswith("ie"):
        forms |= {base[:-2] + "ying", base + "d"}
    elif base.endswith("e") and not base.endswith("ee"):
        forms |= {base[:-1] + "ing", base + "d"}
    else:
        forms |= {base + "ing", base + "ed", base + base[-1] + "ing", base + base[-1] + "ed"}
    return forms


_NOUNISH = set(_INFLECTED_ONLY.split())
VERBS: frozenset[str] = frozenset(
    (set().union(*(_forms(b) for b in _BASE_VERBS.split())) - _NOUNISH)
    | set().union(*(_forms(b) - {b} for b in _NOUNISH))
    | set(_IRREGULAR.split())
)
DETERMINERS = frozenset("a an the this that these those his her its their my your our some many several two three four every each one no".split())
PREPOSITIONS = frozenset("in on at inside under beneath near beside along across through over into onto toward towards by amid among within atop above below behind around from to of with without off up down".split())
STATIC_PREPS = ("in", "on", "at", "inside", "under", "beneath", "near", "beside", "amid", "among", "within", "atop")
#: path prepositions and the place preposition a still description uses instead ("across a field" -> "on a field")
PATH_PREPS = {"across": "on", "along": "on", "over": "above", "onto": "on", "through": "in", "into": "in", "around": "in"}
STOP_WORDS = frozenset("while and as when where but until before after because so then who which that".split())
SUBJECT_PRONOUNS = frozenset("he she it they".split())
POSSESSIVES = frozenset("his her its their".split())
#: a subject for stories told only with pronouns (an indefinite noun, as Fig. 8 of SynCoS' supplementary suggests)
PRONOUN_NOUNS = {"he": "A man", "she": "A woman", "they": "A group of people", "it": "An object", "his": "A man",
                 "her": "A woman", "their": "A group of people", "its": "An object"}
CAMERA_WORDS = frozenset("camera view shot lens viewpoint drone".split())
_LEADING_CONNECTIVES = re.compile(
    r"^(?:and\s+then|and\s+finally|and\s+afterwards|after\s+that|afterwards|then|next|finally|eventually|later|and|so)\b[,\s]*",
    re.I,
)
_CONNECTIVE_SPLIT = re.compile(
    r"\s*(?:,\s*(?:and\s+)?(?:then|next|later|finally|eventually|afterwards|after\s+that|meanwhile)\b"
    r"|\s+and\s+(?:then|finally|later|afterwards|eventually)\b|\s+then\b)[,\s]*",
    re.I,
)


def _word(token: str) -> str:
    return token.strip(",.;:!?\"'()").lower()


def _is_verb_at(tokens: list[str], i: int) -> bool:
    w = _word(tokens[i])
    if w not in VERBS:
        # an unknown word ending in -s right after he/she/it/they is that pronoun's verb ("it bats at ...")
        return i > 0 and _word(tokens[i - 1]) in SUBJECT_PRONOUNS and w.endswith("s") and not w.endswith(("ss", "us"))
    if i > 0 and _word(tokens[i - 1]) in DETERMINERS | PREPOSITIONS:
        return False  # "a running dog", "in falling snow": an adjective, not the action
    if w.endswith("s") and i + 1 < len(tokens):
        nxt = _word(tokens[i + 1])
        if nxt in VERBS and not nxt.endswith(("s", "ing", "ed")):
            return False  # "leaves drift", "waves crash": a plural noun before its verb
    return True


def _first_verb(tokens: list[str], start: int = 0) -> int | None:
    for i in range(start, len(tokens)):
        if _is_verb_at(tokens, i):
            return i
    return None


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


#: sentence ends: Latin punctuation before a space, CJK full-width punctuation with or without one; a sentence
#: that ends inside quotes or brackets (「走吧。」) ends after them
_CLOSING = "」』）”’〉》"
_SENTENCE_END = re.compile(rf"(?<=[.!?;])\s+|(?<=[。！？；][{_CLOSING}])\s*|(?<=[。！？；])(?![{_CLOSING}])\s*")
_ENDS = ".!?;。！？；"
#: a scenario with none of these words (and no English verb) is in another language (rule 7)
_ENGLISH = frozenset("the and is are of with to his her their its".split())  # not "a", "an": French, German


def _joined(left: str, right: str) -> str:
    """Two sentences as one text: a space between them, except after Chinese or Japanese."""
    return left + ("" if ends_full_width(left) else " ") + right


def _finish(text: str) -> str:
    text = text.strip().rstrip(",;: ，、；：")
    if text.rstrip(_CLOSING).endswith(tuple(SENTENCE_ENDS)):
        return text
    return text + ("。" if ends_full_width(text) else ".")


def _sentences(scenario: str) -> list[str]:
    return [s for s in (part.strip().rstrip(_ENDS).strip() for part in _SENTENCE_END.split(scenario)) if s]


def _clauses(scenario: str) -> list[str]:
    pieces: list[str] = []
    for sentence in _sentences(scenario):  # stripped, none empty
        after = re.match(r"^after\s+(.+?),\s*(.+)$", sentence, flags=re.I)
        parts = [after.group(1), after.group(2)] if after else [sentence]
        for part in parts:
            for clause in _CONNECTIVE_SPLIT.split(part):
                clause = _LEADING_CONNECTIVES.sub("", clause.strip().strip(",")).strip()
                if clause:
                    pieces.append(clause)
    return pieces


def _subject(clause: str) -> str | None:
    tokens = clause.split()
    if not tokens or _word(tokens[0]) in SUBJECT_PRONOUNS | POSSESSIVES or _is_verb_at(tokens, 0):
        return None
    v = _first_verb(tokens, 1)
    if v is None:
        return None
    while v > 1 and _word(tokens[v - 1]).endswith("ly") and _word(tokens[v - 2]) not in DETERMINERS:
        v -= 1  # "The camera slowly pans": the adverb belongs to the action
    return " ".join(tokens[:v]).rstrip(",")


def _head(subject: str) -> str:
    """The subject phrase up to its first preposition or comma ("A woman in a red coat" -> "A woman"; "of" stays:
    "A block of ice")."""
    out = []
    for token in subject.split():
        if out and ((_word(token) in PREPOSITIONS and _word(token) != "of") or token.startswith(",")):
            break
        out.append(token)
        if token.endswith(","):
            break
    return " ".join(out).rstrip(",")


def _definite(phrase: str) -> str:
    tokens = phrase.split()
    first = tokens[0].lower()
    if first in ("a", "an", "the"):
        return " ".join(["the", *tokens[1:]])
    if first in DETERMINERS or first.isdigit():
        return " ".join(["the", first, *tokens[1:]])
    return phrase


def _place_after_verb(clause: str, preps: tuple[str, ...]) -> str | None:
    """The first phrase after the clause's verb that starts with one of `preps`, up to a comma, a conjunction or
    the next verb ("trots across a snowy field at dawn, ..." -> "across a snowy field at dawn")."""
    tokens = clause.split()
    v = _first_verb(tokens)
    if v is None:
        return None
    for i in range(v + 1, len(tokens) - 1):
        if _word(tokens[i]) in preps:
            words = [tokens[i]]
            for k in range(i + 1, min(len(tokens), i + 16)):
                if _word(tokens[k]) in STOP_WORDS:
                    break
                words.append(tokens[k])
                if tokens[k].endswith(","):
                    break
            return " ".join(words).rstrip(",") if len(words) > 1 else None
    return None


def _as_setting(phrase: str) -> str:
    prep, _, rest = phrase.partition(" ")
    return f"{PATH_PREPS.get(prep.lower(), prep)} {rest}"


def _resolve(clause: str, subject: str | None, ref: str | None) -> str:
    """The clause with its subject written out (SynCoS rule: no pronouns in local prompts)."""
    tokens = clause.split()
    if ref:
        first = _word(tokens[0])
        if subject and clause.lower().startswith(subject.lower()) and subject.lower() != ref.lower():
            clause = ref + clause[len(subject):]
        elif first in SUBJECT_PRONOUNS:
            clause = " ".join([ref, *tokens[1:]])
        elif first in POSSESSIVES:
            clause = " ".join([ref + "'s", *tokens[1:]])
        elif _is_verb_at(tokens, 0):
            clause = f"{ref} {clause}"
    return _finish(_sentence_case(clause))


def _split_further(event: str) -> list[str] | None:
    """One event cut in two at "and <verb>" or ", <verb>", or None when it has no such point."""
    tokens = event.split()
    for i in range(1, len(tokens) - 1):
        word = _word(tokens[i])
        joins = word == "and" or tokens[i - 1].endswith(",")
        j = i + 1 if word == "and" else i
        if joins and j < len(tokens) and _word(tokens[j]) in VERBS and not _word(tokens[j]).endswith("ing"):
            left = " ".join(tokens[:i]).rstrip(",")
            right = " ".join(tokens[j:])
            if _first_verb(left.split()) is not None:
                return [left, right]
    return None


def _join(a: str, b: str) -> str:
    b = b.rstrip(".")
    if b.split()[0].lower() in ("the", "a", "an", "he", "she", "it", "they"):
        b = b[0].lower() + b[1:]
    return f"{a.rstrip('.')}, then {b}."


class OfflineSplitter(Splitter):
    """Deterministic rule-based scenario splitter (see the module docstring for the rules)."""

    name = "offline"

    def __init__(self) -> None:
        pass

    def describe(self) -> dict:
        return {"splitter": "offline", "rules": "longgen.splitters.offline (rule based, rough)"}

    def split(self, scenario: str, num_prompts: int) -> Story:
        scene = _analyse(scenario, num_prompts)
        local = [_joined(scene.global_prompt, e).strip() for e in scene.events]
        return Story(global_prompt=scene.global_prompt, local_prompts=local, scenario=scene.scenario,
                     source=self.describe())

    def split_shots(self, scenario: str, num_prompts: int) -> Story:
        """The multi-shot form (LCT §3.2.1): the subject becomes "Character 1" (its phrase the description), the
        setting and the other description the environment, each event a shot; every shot after the first starts
        with a cut (rules cannot tell a continuing shot from a new one)."""
        scene = _analyse(scenario, num_prompts)
        # no event found (no English verb: a scenario in another language): each shot shows the scene, as each
        # local prompt of `split` then is the global prompt; an empty shot is no valid story
        characters, environment, events = {}, scene.global_prompt, [e or scene.global_prompt for e in scene.events]
        if scene.subject and not scene.camera:
            characters = {"1": scene.subject[:1].lower() + scene.subject[1:]}
            rest = [_as_setting(scene.setting)] if scene.setting else []
            rest += scene.description
            environment = _finish(_sentence_case(", ".join(p.strip() for p in rest))) if rest else None
            # the subject as events name it: "the red fox", or shortened to its noun, "the fox"
            names = sorted({scene.ref, f"the {_head(scene.subject).split()[-1]}"}, key=len, reverse=True)
            ref = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b", flags=re.I)
            events = [ref.sub("Character 1", e) for e in events]
        shots = [e if k == 0 else f"[SHOT CUT] {e}" for k, e in enumerate(events)]
        data = {"characters": characters, "shots": shots}
        if environment:
            data["environment"] = environment
        story = Story.from_dict(data)
        story.scenario, story.source = scene.scenario, {**self.describe(), "form": "multi-shot"}
        return story


@dataclass
class _Scene:
    """What the rules read from a scenario (see the module docstring)."""

    scenario: str
    subject: str | None  # the noun phrase before the first verb ("A red fox"), None when there is none
    camera: bool  # the subject is the camera (the global prompt then describes what it looks at)
    setting: str | None  # the first place phrase after a verb ("across a snowy field")
    description: list[str]  # clauses without a verb
    ref: str | None  # how events name the subject ("the red fox")
    global_prompt: str
    events: list[str]  # exactly N, subjects written out


def _analyse(scenario: str, num_prompts: int) -> _Scene:
    scenario = check_scenario(scenario)
    n = check_num_prompts(num_prompts)
    clauses = _clauses(scenario)
    # a clause with a verb, or one that starts with a pronoun, is an event; the rest describe the scene
    is_event = [_first_verb(c.split()) is not None or _word(c.split()[0]) in SUBJECT_PRONOUNS | POSSESSIVES for c in clauses]
    if not any(is_event) and not any(_word(t) in _ENGLISH for t in scenario.split()):
        return _other_language(scenario, n)
    events = [c for c, e in zip(clauses, is_event) if e]
    description = [c for c, e in zip(clauses, is_event) if not e]

    subject = next((s for s in map(_subject, events) if s), None)
    if subject is None and events and _word(events[0].split()[0]) in PRONOUN_NOUNS:
        subject = PRONOUN_NOUNS[_word(events[0].split()[0])]
    ref = _definite(_head(subject)) if subject else None
    camera = bool(subject) and _word(_head(subject).split()[-1]) in CAMERA_WORDS
    parts: list[str] = []
    setting = None
    if camera:
        target = next((p for p in (_place_after_verb(e, tuple(PREPOSITIONS)) for e in events) if p), None)
        if target:
            parts.append(target.split(" ", 1)[1] if " " in target else target)
    elif subject:
        parts.append(subject)
        preps = STATIC_PREPS + tuple(PATH_PREPS)
        setting = next((p for p in (_place_after_verb(e, preps) for e in events) if p), None)
        if setting and _as_setting(setting).lower() in subject.lower():
            setting = None
        if setting:
            parts[-1] = f"{subject} {_as_setting(setting)}"
    parts += description
    if not parts:
        parts = [events[0]] if events else [scenario]
    global_prompt = _finish(_sentence_case(", ".join(p.strip() for p in parts)))

    events = [_resolve(e, subject, ref) for e in events]
    while len(events) < n:
        order = sorted(range(len(events)), key=lambda i: (-len(events[i].split()), i))
        for i in order:
            halves = _split_further(events[i].rstrip("."))
            if halves:
                events[i : i + 1] = [_resolve(h, subject, ref) for h in halves]
                break
        else:
            break
    if len(events) < n:
        events = _stages(events, n)
    words = [len(e.split()) for e in events]  # kept beside `events` so each merge costs O(events), not O(text)
    while len(events) > n:
        i = min(range(len(events) - 1), key=lambda k: (words[k] + words[k + 1], k))
        events[i : i + 2] = [_join(events[i], events[i + 1])]
        words[i : i + 2] = [len(events[i].split())]
    return _Scene(scenario, subject, camera, setting, description, ref, global_prompt, events)


def _other_language(scenario: str, n: int) -> _Scene:
    """Rule 7: sentences as events, the first one the global prompt; exactly n by merging or repeating."""
    events = [_finish(sentence) for sentence in _sentences(scenario)]
    global_prompt = events[0]  # the first sentence, before any merging
    while len(events) > n:
        i = min(range(len(events) - 1), key=lambda k: (len(events[k]) + len(events[k + 1]), k))
        events[i : i + 2] = [_joined(events[i], events[i + 1])]
    counts = [n // len(events) + (1 if i < n % len(events) else 0) for i in range(len(events))]
    events = [event for event, k in zip(events, counts) for _ in range(k)]
    # local prompt = global + event: an event that opens with the global prompt gives only what follows it
    events = [e[len(global_prompt):].strip() if e.startswith(global_prompt) else e for e in events]
    return _Scene(scenario, None, False, None, [], None, global_prompt, events)


def _stages(events: list[str], n: int) -> list[str]:
    """Repeat events in stages until there are n: earlier events get the extra copies."""
    if not events:
        return [""] * n
    counts = [n // len(events) + (1 if i < n % len(events) else 0) for i in range(len(events))]
    out: list[str] = []
    for event, k in zip(events, counts):
        base = event.rstrip(".")
        for j in range(k):
            if k == 1 or j == 0:
                out.append(event)
            elif j == k - 1:
                out.append(f"{base}, finishing.")
            else:
                out.append(f"{base}, continuing.")
    return out
