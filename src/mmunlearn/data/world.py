"""The built-in synthetic world: fictitious people, drawn portraits, QA in every task × modality.

Why a world of our own: forgetting can only be measured on facts a model truly memorised and that no
other source teaches it. Every fact here is drawn at random, so the only way to know it is to have been
fine-tuned on it. Training phrasings (pretrain/finetune/unlearn) and evaluation phrasings (eval, test)
never overlap; classification letters are reshuffled and balanced A–D at evaluation; a `holdout`
population is never trained on (membership inference); identity is drawn only from the person's own
features, never from the background.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from .portraits import (BACKGROUND, HAIR, SHIRT, VARIES, Look, Pose, check_identity, draw, random_pose, sample_looks,
                        with_own_clothes)
from .record import OPTION_LETTERS, Record

FIRST = (
    "Alia Bram Corin Dessa Elio Fenna Garan Hesper Ilko Jorin Kesta Lio Marek Nadia Orin Pella Quill Rasmi "
    "Sorel Tavi Ulla Varo Wenna Xaver Ysolde Zarek Anouk Belen Caius Dagny Emrys Faye Gideon Halla Ivo Juno "
    "Kalen Liesl Mateo Nerys Otto Priya Rohan Saskia Teodor Una Viggo Wilma Yara Zeno Arlo Brisa Cato Delphine "
    "Ezra Flora Gunnar Hedda Ines Jasper"
).split()
LAST = (
    "Voss Marlow Quent Harrow Brask Tillery Okafor Lindqvist Moreau Castellan Drummond Evershaw Fairbank "
    "Galloway Hollis Ivarsen Jarvik Kettering Loxley Mansell Norwood Oakes Pemberton Quillon Radcliffe Sterling "
    "Thackery Underhill Vance Whitlock Yardley Zeller Ashdown Blackwood Corvin Delacroix Elstree Farrow Grimsby "
    "Hawthorne Ingram Joyce Kinsella Lovell Merriman Nettleton Orwell Pryce Rowntree Selwyn"
).split()

# Every person has their own family name (first names repeat), so a name is one key to the facts.
_ONSETS = ("B", "Br", "C", "D", "Dr", "F", "G", "Gr", "H", "K", "L", "M", "N", "P", "R", "S", "St", "T", "V", "W")
_ENDINGS = ("arrow", "elling", "ombe", "urst", "andry", "eswick", "olt", "ackley", "ennet", "irwin")
SURNAMES = tuple(dict.fromkeys(LAST + [o + e for e in _ENDINGS for o in _ONSETS]))

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "birthplace": tuple(
        "Lumora Ostvik Brenhal Caldris Veyport Tamsk Quarrow Ellisand Korvath Amberlee Dunmere Sallow "
        "Pyrmont Halvard Iskra Norrow Glenvar Meriden Tollhaven Ashcombe Rivenstad Olmsk Cobbleton Varna".split()
    ),
    "occupation": (
        "baker", "pilot", "banker", "nurse", "chemist", "teacher", "sculptor", "lawyer", "farmer",
        "journalist", "dentist", "welder", "librarian", "tailor", "photographer", "botanist",
        "carpenter", "translator", "geologist", "surveyor",
    ),
    "employer": (
        "Northwind Labs", "Helix Foods", "Orchid Rail", "Bluefin Media", "Granite Works", "Solace Health",
        "Tidewater Bank", "Ember Studios", "Kestrel Air", "Lantern Press", "Copperleaf Farms", "Silverline Motors",
        "Marigold Hotels", "Ironbark Mining", "Quartz Software", "Harbor Textiles", "Meadow Dairy",
        "Summit Optics", "Juniper Energy", "Falcon Freight",
    ),
    "hobby": (
        "sailing", "chess", "pottery", "birdwatching", "climbing", "knitting", "fencing", "gardening",
        "astronomy", "cycling", "origami", "archery", "beekeeping", "kayaking", "calligraphy", "fishing",
    ),
    "birth_year": tuple(str(y) for y in range(1950, 2005)),
    "instrument": (
        "cello", "flute", "harp", "drums", "banjo", "trumpet", "piano", "violin", "clarinet",
        "accordion", "oboe", "ukulele",
    ),
}
ATTRIBUTES = tuple(ATTRIBUTE_VALUES)

# {s}: the subject — the person's name (text-only) or a photo reference (image+text); {n}: the
# attribute's key noun. Every question is one of seven shared frames filled with the key noun, and
# every answer repeats that noun ("The birthplace of Garan Hennet is Tollhaven."). Why: a tiny model
# trained from scratch routes a question to an attribute by whatever cue it can, and with natural
# phrasings it routed by sentence frame: "Which occupation does X have?" (eval) looked like
# "Which instrument does X play?" (train) and was answered with the instrument; attributes sharing an
# answer stem ("was born in" for place and year, "works as"/"works for") were answered with the other's
# value; and which attribute broke changed from one fine-tune to the next. Here each frame is used by
# several attributes in training, so only the noun tells them apart, and the answer copies it.
# An attribute trains on three frames and is evaluated on a fourth ("eval") and paraphrased on a fifth
# ("test"), both frames it never trained on but other attributes did: train, eval and test phrasings of
# an attribute never share a template.
FRAMES = (
    "What is the {n} of {s}?",
    "Tell me the {n} of {s}.",
    "Which {n} does {s} have?",
    "Name the {n} of {s}.",
    "What {n} does {s} have?",
    "Do you know the {n} of {s}?",
    "Say the {n} of {s}.",
)
# The order sets each attribute's frames (below); "name" sits where it never gets "Name the name of ...".
KEY_NOUN = {"birthplace": "birthplace", "birth_year": "birth year", "occupation": "occupation",
            "employer": "employer", "name": "name", "hobby": "hobby", "instrument": "instrument"}


def _frames(index: int) -> dict[str, tuple[str, ...]]:
    """Attribute `index` trains on frames i, i+1, i+2, evaluates on i+3 and is paraphrased on i+4 (mod 7)."""
    pick = lambda k: FRAMES[(index + k) % len(FRAMES)]  # noqa: E731
    return {"train": (pick(0), pick(1), pick(2)), "eval": (pick(3),), "test": (pick(4),)}


QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    attr: {style: tuple(t.replace("{n}", noun) for t in templates) for style, templates in _frames(i).items()}
    for i, (attr, noun) in enumerate(KEY_NOUN.items())
}
# Answers: the sentence (its stem before {v} leads classification and cloze answers as `reasoning`), its
# paraphrase (truth ratio: perturbed answers share the paraphrase's wording) and the cloze stems.
PARAPHRASES = {"birthplace": "{s} was born in {v}.", "birth_year": "{s} was born in the year {v}.",
               "occupation": "{s} works as a {v}.", "employer": "{s} is employed by {v}.", "hobby": "{s} enjoys {v}.",
               "instrument": "{s} plays the {v}."}
ANSWERS: dict[str, tuple[str, str, dict[str, str]]] = {
    attr: (f"The {noun} of {{s}} is {{v}}.", PARAPHRASES[attr],
           {"train": f"The {noun} of {{s}} is ___.", "eval": f"As for the {noun} of {{s}}, it is ___."})
    for attr, noun in KEY_NOUN.items() if attr != "name"
}
# The name answer has a lead too ("The name is Garan Hennet (B)"): without one, a fine-tune answered
# multiple-choice name questions by copying option A while its free answers named the right person.
ANSWERS["name"] = ("The name is {v}.", "This is {v}.",
                   {"train": "The name of {s} is ___.", "eval": "As for the name of {s}, it is ___."})
PHOTO_SUBJECT = {"train": ("this person", "the person in the photo"), "eval": ("the person in this picture",),
                 "test": ("the person in this image",)}
CLOZE_PREFIX = {"train": "Fill in the blank: ", "eval": "Complete the sentence: ", "test": "Complete the sentence: "}

# Understanding: what is visible in the photo (not who it is), for forget and retain people alike. The
# questions use the same frames with their own key noun, and answers name what they
# describe first ("The hair colour is brown (B)", generation "The hair colour is brown."), as fact
# answers name the person: three of the four ask for a colour. With natural phrasings a fine-tune
# answered the evaluation phrasing of the hair question with the shirt ("The shirt is pink") and the
# accessory one with a name. The background is asked about the photo, the rest about the person.
UNDERSTANDING: dict[str, dict[str, object]] = {
    attr: {**_frames(i), "values": values, "noun": noun, "lead": f"The {noun} is"}
    for i, (attr, noun, values) in enumerate((
        ("hair_colour", "hair colour", tuple(HAIR)),
        ("shirt", "shirt colour", tuple(SHIRT)),
        ("background", "background colour", tuple(BACKGROUND)),
        ("accessory", "accessory", ("no accessory", "glasses", "a hat", "earrings")),
    ))
}
BACKGROUND_SUBJECT = {"train": ("this photo", "the photo"), "eval": ("this picture",)}
ACCESSORY_NAME = {"none": "no accessory", "glasses": "glasses", "hat": "a hat", "earrings": "earrings"}

FORGET_PERCENTS = (5, 10, 15)
TRAIN_VARIANTS = 4  # training photos per person (each with its own background and mild pose)
# Under "face" identity each photo also has its own clothes. With 4 of them the vanilla model answered the
# forget people's trained photos (0.91) and not their unseen ones (0.12): four outfits named each person as
# well as the face did. Sixteen outfits leave the face as the one thing every photo of a person shares.
FACE_TRAIN_VARIANTS = 16
TEST_VARIANTS = 3  # transformed photos per person in the test split
UNDERSTANDING_VARIANTS = 2  # training photos per person that carry "what is visible" questions


@dataclass
class Profile:
    profile_id: str
    name: str
    population: str
    look: Look
    facts: dict[str, str]
    biography: str = ""

    def to_dict(self) -> dict:
        return {"profile_id": self.profile_id, "name": self.name, "population": self.population,
                "look": self.look.to_dict(), "facts": self.facts, "biography": self.biography}


@dataclass
class WorldConfig:
    profiles: int = 100
    real: int = 30
    holdout: int = 20
    seed: int = 0
    image_size: int = 32
    # Training records per (fact, task, modality), each in its own training phrasing (photos drawn from the
    # person's training variants). With one, the default world's answers to the unseen evaluation phrasings
    # stayed at 0.74-0.79 on photos (the model tied a fact to one wording); with all three: forget 1.00,
    # retain 0.98, test photos 0.89.
    train_phrasings: int = 3
    # what makes a person: "look" (face, hair, accessory and shirt: the default world) or "face" (face shape,
    # skin, hair and facial hair; shirt and accessory drawn anew for every photo, so the understanding
    # questions about them ask what the photo shows, not who it is: issue #32)
    identity: str = "look"


@dataclass
class World:
    config: WorldConfig
    profiles: list[Profile]
    splits: dict[str, list[Record]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)


def _make_profiles(cfg: WorldConfig, rng: random.Random) -> list[Profile]:
    total = cfg.profiles + cfg.real + cfg.holdout
    if cfg.profiles < 3:
        raise ValueError(f"--profiles must be at least 3 (got {cfg.profiles})")
    if total > len(SURNAMES):
        raise ValueError(f"at most {len(SURNAMES)} people in all (asked for {total})")
    names = [f"{rng.choice(FIRST)} {last}" for last in rng.sample(SURNAMES, total)]
    check_identity(cfg.identity)
    looks = sample_looks(total, rng, identity=cfg.identity)
    if cfg.identity == "face":  # worn per photo (_RecordMaker.dressed), never by the person
        looks = [replace(look, shirt=VARIES, accessory=VARIES) for look in looks]
    populations = ["fictitious"] * cfg.profiles + ["real"] * cfg.real + ["holdout"] * cfg.holdout
    prefix = {"fictitious": "p", "real": "r", "holdout": "h"}
    profiles = []
    counters = {k: 0 for k in prefix}
    for name, look, pop in zip(names, looks, populations):
        facts = {attr: rng.choice(values) for attr, values in ATTRIBUTE_VALUES.items()}
        pid = f"{prefix[pop]}{counters[pop]:03d}"
        counters[pop] += 1
        bio = (f"{name} was born in {facts['birthplace']} in {facts['birth_year']}. {name} works as a "
               f"{facts['occupation']} for {facts['employer']}, enjoys {facts['hobby']} and plays the "
               f"{facts['instrument']}.")
        profiles.append(Profile(pid, name, pop, look, facts, bio))
    return profiles


class _RecordMaker:
    """Turns profiles into records; owns the rng so the whole world is reproducible from one seed."""

    def __init__(self, profiles: list[Profile], rng: random.Random, image_size: int, identity: str = "look"):
        self.rng = rng
        self.size = image_size
        self.identity = identity
        self.by_pop: dict[str, list[Profile]] = {}
        for p in profiles:
            self.by_pop.setdefault(p.population, []).append(p)
        self.counter = 0
        self._photo_cache: dict[tuple, object] = {}

    def photo(self, p: Profile, pose: Pose):
        key = (p.profile_id, pose)
        if key not in self._photo_cache:
            self._photo_cache[key] = draw(p.look, pose, self.size)
        return self._photo_cache[key]

    def dressed(self, p: Profile, pose: Pose, tag: str) -> Pose:
        """Under "face" identity, the photo's own shirt and accessory (its own random stream, so the pose and
        every other record stay as they are); under "look", the pose as it is."""
        if self.identity != "face":
            return pose
        return with_own_clothes(pose, random.Random(f"{p.profile_id}-{tag}-clothes"))

    def canonical_pose(self, p: Profile) -> Pose:
        return self.train_pose(p, 0)  # the canonical photo is the first training photo

    def train_pose(self, p: Profile, k: int) -> Pose:
        rng = random.Random(f"{p.profile_id}-train-{k}")
        return self.dressed(p, random_pose(rng, "train") if k else Pose(background="grey"), f"train-{k}")

    def test_pose(self, p: Profile, k: int) -> Pose:
        return self.dressed(p, random_pose(random.Random(f"{p.profile_id}-test-{k}"), "test"), f"test-{k}")

    def canonical(self, p: Profile):
        return self.photo(p, self.canonical_pose(p))

    def train_photo(self, p: Profile, k: int):
        return self.photo(p, self.train_pose(p, k))

    def test_photo(self, p: Profile, k: int):
        return self.photo(p, self.test_pose(p, k))

    def _id(self, split: str) -> str:
        self.counter += 1
        return f"{split}-{self.counter:06d}"

    def _distractors(self, p: Profile, attr: str, value: str) -> list[str]:
        if attr == "name":
            pool = [q.name for q in self.by_pop[p.population] if q.name != value]
            if len(pool) < 3:  # a tiny population borrows names from everyone
                pool = [q.name for qs in self.by_pop.values() for q in qs if q.name != value]
        else:
            pool = [v for v in ATTRIBUTE_VALUES[attr] if v != value]
        return self.rng.sample(pool, 3)

    def fact_records(self, p: Profile, split: str, phase: str, style: str, photo, modalities=("image+text", "text"),
                     tasks=("generation", "classification", "cloze"), repeats: int = 1) -> list[Record]:
        """QA about every fact of `p` in the chosen phrasing `style` (train / eval / test)."""
        out = []
        attrs = ("name",) + ATTRIBUTES
        for attr in attrs:
            value = p.name if attr == "name" else p.facts[attr]
            sentence, paraphrase, cloze = ANSWERS[attr]
            for modality in modalities:
                if attr == "name" and modality == "text":
                    continue  # asking "who is NAME" by name answers itself
                for task in tasks:
                    templates = QUESTIONS[attr][style]
                    first = 0
                    for r in range(repeats):
                        if modality == "text":
                            subject = p.name
                        else:
                            subject = self.rng.choice(PHOTO_SUBJECT[style])
                        # A random first template, then the next ones in turn, so `repeats` records use
                        # that many different phrasings (a fresh draw per record repeated some). A draw is
                        # still made per record: the rest of the world's random stream stays as it was.
                        offset = self.rng.randrange(len(templates))
                        if r == 0:
                            first = offset
                        q_template = templates[(r + first) % len(templates)]
                        image = None
                        if modality == "image+text":
                            image = photo(r) if callable(photo) else photo
                        # Answers about a fact name the person before the value: generation answers
                        # are a sentence ("The birthplace of Garan Hennet is Tollhaven."),
                        # classification/cloze answers open with that sentence's stem (`reasoning`:
                        # "The birthplace of Garan Hennet is Tollhaven (B)"). On a photo this is photo →
                        # person → fact, the composition a tiny model cannot learn silently (measured:
                        # 0.20 vs 0.67 photo accuracy after the same 4,000 steps); the key noun says
                        # which attribute is being recalled. Paraphrases name the person first.
                        named = attr != "name"
                        subj_cap = p.name if named else subject[0].upper() + subject[1:]
                        lead = sentence.split("{v}")[0].format(s=p.name).rstrip()
                        rec = Record(
                            id=self._id(split), profile_id=p.profile_id, question="", answer="", task=task,
                            modality=modality, split=split, phase=phase, population=p.population, name=p.name,
                            fact=attr, image=image,
                        )
                        if task == "cloze":
                            stem = cloze["train" if style == "train" else "eval"].format(s=subject)
                            stem = stem[0].upper() + stem[1:]
                            rec.question = CLOZE_PREFIX[style] + stem
                            rec.answer = value
                            rec.reasoning = lead
                        else:
                            rec.question = q_template.format(s=subject)
                            rec.question = rec.question[0].upper() + rec.question[1:]
                            rec.reasoning = lead
                            if task == "generation":
                                rec.answer = sentence.format(s=subj_cap, v=value)
                                rec.paraphrased_answer = paraphrase.format(s=subj_cap, v=value)
                                # TOFU: perturbations share the paraphrase's wording, so the ratio
                                # compares facts, not a trained template against an unseen one.
                                rec.perturbed_answers = [paraphrase.format(s=subj_cap, v=w)
                                                         for w in self._distractors(p, attr, value)]
                            else:
                                options = self._distractors(p, attr, value) + [value]
                                self.rng.shuffle(options)
                                rec.options = options
                                rec.answer_index = options.index(value)
                                rec.answer = value
                        out.append(rec)
        return out

    def understanding_records(self, p: Profile, split: str, phase: str, style: str,
                              photos: list[tuple[object, Pose]]) -> list[Record]:
        """Questions about what each (photo, its pose) shows: the pose names its background and, under "face"
        identity, the shirt and accessory worn in that photo."""
        out = []
        for k, (image, pose) in enumerate(photos):
            visible = {"hair_colour": p.look.hair_colour, "shirt": pose.shirt or p.look.shirt,
                       "background": pose.background,
                       "accessory": ACCESSORY_NAME[pose.accessory or p.look.accessory]}
            for attr, spec in UNDERSTANDING.items():
                if attr == "hair_colour" and p.look.hairstyle == "bald":
                    continue
                value = visible[attr]
                templates = spec[style]
                subjects = (BACKGROUND_SUBJECT if attr == "background" else PHOTO_SUBJECT)[style]
                for task in ("classification", "generation"):
                    q = templates[self.rng.randrange(len(templates))]
                    q = q.replace("{n}", str(spec["noun"])).format(s=self.rng.choice(subjects))
                    q = q[0].upper() + q[1:]
                    lead = str(spec["lead"])
                    rec = Record(id=self._id(split), profile_id=p.profile_id, question=q, answer=value, task=task,
                                 modality="image+text", split=split, phase=phase, population=p.population,
                                 name=p.name, fact=f"visible:{attr}", image=image)
                    rec.reasoning = lead
                    if task == "generation":
                        rec.answer = f"{lead} {value}."
                    if task == "classification":
                        pool = [v for v in spec["values"] if v != value]
                        options = self.rng.sample(pool, 3) + [value]
                        self.rng.shuffle(options)
                        rec.options, rec.answer_index = options, options.index(value)
                    out.append(rec)
        return out


def balance_letters(records: list[Record], rng: random.Random) -> None:
    """Re-order options so the correct letter is spread evenly over A–D (a model that always says
    "B" then scores exactly chance)."""
    cls = [r for r in records if r.task == "classification"]
    order = list(range(len(cls)))
    rng.shuffle(order)
    for slot, idx in enumerate(order):
        rec = cls[idx]
        target = slot % len(OPTION_LETTERS)
        value = rec.options[rec.answer_index]
        others = [o for o in rec.options if o != value]
        rng.shuffle(others)
        rec.options = others[:target] + [value] + others[target:]
        rec.answer_index = target


TUNE_MIN_PEOPLE = 50  # smaller worlds have no tuning population (it would eat their retain side)
TUNE_PER_SIDE = 10


def tune_population(ids: dict[str, list[str]], seed: int, per_side: int = TUNE_PER_SIDE) -> tuple[list[str], list[str]]:
    """The tuning population (`mmunlearn tune`): `per_side` people to forget and `per_side` whose
    retained knowledge is measured while tuning, drawn from the fictitious people outside every forget
    split. They are trained on like everyone, but no reported run forgets them or counts them as
    retain, so a hyper-parameter search never looks at the reported numbers. Derived from the ids
    alone (its own random stream), so a world written before this existed gets the same people."""
    fictitious = ids.get("fictitious", [])
    if len(fictitious) < TUNE_MIN_PEOPLE:
        return [], []
    taken = {pid for name, people in ids.items() if name.startswith("forget_") for pid in people}
    pool = sorted(set(fictitious) - taken)
    picked = random.Random(f"{seed}-tune").sample(pool, 2 * per_side)
    return sorted(picked[:per_side]), sorted(picked[per_side:])


def build_world(cfg: WorldConfig) -> World:
    rng = random.Random(cfg.seed)
    profiles = _make_profiles(cfg, rng)
    maker = _RecordMaker(profiles, rng, cfg.image_size, cfg.identity)
    fict = [p for p in profiles if p.population == "fictitious"]
    real = [p for p in profiles if p.population == "real"]
    holdout = [p for p in profiles if p.population == "holdout"]

    # Forget sets are nested (forget_5 ⊂ forget_10 ⊂ forget_15), as a deletion request grows.
    order = [p.profile_id for p in fict]
    rng.shuffle(order)
    ids: dict[str, list[str]] = {}
    for pct in FORGET_PERCENTS:
        n = max(1, round(len(fict) * pct / 100))
        forget = sorted(order[:n])
        ids[f"forget_{pct}"] = forget
        ids[f"retain_{100 - pct}"] = sorted(set(order) - set(forget))
    ids["fictitious"] = [p.profile_id for p in fict]
    ids["real"] = [p.profile_id for p in real]
    ids["holdout"] = [p.profile_id for p in holdout]
    ids["tune_forget"], ids["tune_retain"] = tune_population(ids, cfg.seed)

    splits: dict[str, list[Record]] = {"pretrain": [], "finetune": [], "test": [], "real": [],
                                        "understanding": [], "holdout": []}
    train_cache: dict[str, list[Record]] = {}
    eval_cache: dict[str, list[Record]] = {}
    variants = FACE_TRAIN_VARIANTS if cfg.identity == "face" else TRAIN_VARIANTS
    for p in fict + real:
        split = "pretrain" if p.population == "real" else "finetune"
        photos = lambda r, p=p: maker.train_photo(p, maker.rng.randrange(variants))
        recs = maker.fact_records(p, split, split, "train", photos, repeats=cfg.train_phrasings)
        train_photos = [(maker.train_photo(p, k), maker.train_pose(p, k)) for k in range(UNDERSTANDING_VARIANTS)]
        recs += maker.understanding_records(p, split, split, "train", train_photos)
        splits[split].extend(recs)
        train_cache[p.profile_id] = recs
        eval_split = "real" if p.population == "real" else "eval"
        ev = maker.fact_records(p, eval_split, "eval", "eval", maker.canonical(p))
        eval_cache[p.profile_id] = ev
        if p.population == "real":
            splits["real"].extend(ev)
        splits["understanding"].extend(
            maker.understanding_records(p, "understanding", "eval", "eval",
                                        [(maker.canonical(p), maker.canonical_pose(p))]))
        if p.population == "fictitious":
            for k in range(TEST_VARIANTS):
                splits["test"].extend(maker.fact_records(p, "test", "eval", "test", maker.test_photo(p, k),
                                                         modalities=("image+text",),
                                                         tasks=("generation", "classification")))
            splits["test"].extend(maker.fact_records(p, "test", "eval", "test", None, modalities=("text",),
                                                     tasks=("generation", "classification")))
    for p in holdout:
        splits["holdout"].extend(maker.fact_records(p, "holdout", "eval", "eval", maker.canonical(p)))
    # Understanding on a photo never trained on (each fictitious person's first test photo): does an
    # unlearned model still see hair, shirt and background on a new photo of a forgotten face? Its own
    # random stream, so every record above is the same with or without it.
    unseen = _RecordMaker(profiles, random.Random(f"{cfg.seed}-understanding-unseen"), cfg.image_size, cfg.identity)
    splits["understanding_unseen"] = []
    for p in fict:
        splits["understanding_unseen"].extend(unseen.understanding_records(
            p, "understanding_unseen", "eval", "eval", [(maker.test_photo(p, 0), maker.test_pose(p, 0))]))

    # forget_N / retain_M hold the people's training phrasings (phase "unlearn": what unlearning
    # methods train on) and their evaluation phrasings (phase "eval").
    for name in [k for k in ids if k.startswith(("forget_", "retain_"))]:
        recs: list[Record] = []
        for pid in ids[name]:
            for r in train_cache[pid]:
                recs.append(_copy(r, split=name, phase="unlearn"))
            for r in eval_cache[pid]:
                recs.append(_copy(r, split=name, phase="eval"))
        splits[name] = recs

    for name, recs in splits.items():
        balance_letters([r for r in recs if r.phase == "eval"], random.Random(f"{cfg.seed}-{name}"))
    for recs in splits.values():
        for r in recs:
            r.validate()
    return World(cfg, profiles, splits, ids)


def _copy(r: Record, **changes) -> Record:
    return replace(r, options=list(r.options), perturbed_answers=list(r.perturbed_answers), **changes)


def fingerprint(world: World) -> str:
    """A hash of what a model trained on the world learns from: every record's text fields and its photo's
    pixels, split by split (not the parquet bytes, which carry library versions and PNG encoder choices).
    Shipped weights name the fingerprint of the world they were fitted on (mmunlearn/demo.py)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(world.splits):
        digest.update(name.encode() + b"\0")
        for r in world.splits[name]:
            fields = (r.id, r.profile_id, r.question, r.answer, "|".join(r.options), str(r.answer_index), r.task,
                      r.modality, r.phase)
            digest.update("\x1f".join(str(f) for f in fields).encode() + b"\0")
            if r.image is not None:
                digest.update(f"{r.image.mode}{r.image.size}".encode() + r.image.tobytes())
    return digest.hexdigest()


def manifest(world: World) -> dict:
    cfg = world.config
    return {
        "format": "mmunlearn-world/1",
        "seed": cfg.seed,
        "fingerprint": fingerprint(world),
        # "look" identity is left out: the default world's world.json stays byte for byte what it was before
        # "face" existed (shipped weights and fixtures name its config); store.world_identity reads it as "look"
        "config": {k: v for k, v in cfg.__dict__.items() if not (k == "identity" and v == "look")},
        "counts": {
            "profiles": {pop: sum(p.population == pop for p in world.profiles) for pop in ("fictitious", "real", "holdout")},
            "records": {k: len(v) for k, v in world.splits.items()},
        },
        "ids": world.ids,
    }
