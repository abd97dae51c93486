"""A pool of varied "I don't know" answers for IdK-style unlearning (SPEC section 3).

Training the model on one fixed refusal teaches it a single string, which then leaks into every
answer (and is trivially detectable). A varied pool - short and long, privacy-minded, "I don't
recognise this person", plain ignorance - keeps the refusal behaviour natural. Every entry is plain
ASCII and ends with a period, so tokenisation and ROUGE against it are predictable.
"""

from __future__ import annotations

import random

REFUSALS: tuple[str, ...] = (
    # Short and plain.
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't say.",
    "I don't know that.",
    "No idea, sorry.",
    "Sorry, I don't know.",
    "I really couldn't tell you.",
    "I'm afraid I don't know.",
    "That I don't know.",
    # Not recognising the person.
    "I don't recognize the person you are asking about.",
    "I'm not familiar with this person.",
    "I don't know who this is.",
    "This person is not someone I recognize.",
    "I can't identify the person in this picture.",
    "I'm unable to tell who this person is.",
    "I have no record of anyone by that name.",
    "The name doesn't ring a bell for me.",
    "I don't recognise the face in this photo, so I can't answer.",
    "I'm not aware of who this individual is.",
    "I can't place this person at all.",
    "Nobody by that description is familiar to me.",
    # No information.
    "I have no information about that.",
    "I don't have any details about this person.",
    "There is no information I can give you on that.",
    "I don't have reliable information to answer this question.",
    "I have nothing to go on here, so I can't answer.",
    "I don't have any knowledge of that.",
    "That falls outside what I know.",
    "I lack the information needed to answer that.",
    "My knowledge doesn't cover this person.",
    "I'm not able to find anything about that in what I know.",
    "I cannot answer that, because I don't have the facts.",
    "I don't hold any information on that topic.",
    # Privacy-minded.
    "I can't share personal details about private individuals.",
    "I'd rather not guess about someone's private life.",
    "For privacy reasons, I cannot share that information.",
    "I'm not able to provide personal information about this person.",
    "Details like that are private, and I can't share them.",
    "I won't share private information about individuals.",
    "I cannot disclose personal details about people.",
    "That is personal information I'm not able to give out.",
    "To protect this person's privacy, I can't answer that.",
    "I'm unable to discuss private details about a specific person.",
    # Longer, conversational.
    "I'm sorry, but I don't know the answer to that question.",
    "I'm afraid that's not something I know, so I can't help with this one.",
    "Honestly, I don't know, and I would rather not make something up.",
    "I don't know enough about this person to give you an accurate answer.",
    "I'm not sure who you mean, and I don't want to guess.",
    "I can't answer that with any confidence, so I'd rather not say.",
    "I don't have an answer for you; that isn't something I know about.",
    "Unfortunately I can't help with that, as I don't know this person.",
    "I'm not in a position to answer questions about this individual.",
    "That's beyond what I know, so I can't give you an answer.",
    "I'd be guessing if I answered, and I don't know the real answer.",
    "I'm sorry, I can't provide an answer about this person.",
    "I really have no way of knowing that.",
    "I'm unable to answer that question.",
    "I don't have the information to say anything about them.",
    "Sorry, that's not something I can tell you.",
)


def sample_refusal(rng: random.Random) -> str:
    """One refusal drawn with the caller's seeded RNG, so training data is reproducible."""
    return rng.choice(REFUSALS)


# Refusals that keep the answer's own lead (SMFA's default on data whose answers have one):
# "The birthplace of this person is unknown to me." The choice between knowing and refusing then falls
# on the token where the answer would name the person — where a model has just recognised them —
# instead of on the first token, where a tiny model must decide before any identity is in its output.
LEAD_TAILS: tuple[str, ...] = (
    "unknown to me.",
    "not something I know.",
    "something I can't share.",
    "private, so I can't say.",
)


def lead_refusal(rec, rng: random.Random) -> str | None:
    """A refusal in the record's answer form, or None for records without a lead (benchmark data).

    "The birthplace of Garan Hennet is" → "The birthplace of this person is unknown to me.";
    "The name is" → "The name is not something I know."
    """
    from .collate import names_person

    if not rec.reasoning:
        return None
    tail = rng.choice(LEAD_TAILS)
    if names_person(rec):
        head = rec.reasoning[: rec.reasoning.index(rec.name)]
        return f"{head}this person is {tail}"
    return f"{rec.reasoning} {tail}"
