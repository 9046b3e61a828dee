"""Everyday sentences for the synthetic conversations' text-cued turns (``everyday_text`` > 0).

The keyword grammar of :mod:`.synthetic` ("i am so furious about the trip") teaches a text
expert a handful of words. These templates say each emotion the way people do -- events, requests,
complaints, plans, negation ("i can't take this anymore", "nothing is wrong, it's fine") -- from
slot lexicons, so a sentence encoder's head learns situations rather than keywords. Each template
belongs to one class and its slots never carry another class's cue.

The everyday-sentence benchmark (``benchmarks/data/emotion_sentences*.csv``) was written apart
from this file; ``tests/test_emotion_sentences.py`` checks that no benchmark sentence is generated here.
"""

from __future__ import annotations

import re

import numpy as np

PEOPLE = ["my sister", "my brother", "my mom", "my dad", "my boss", "the neighbour", "our coach", "my roommate",
          "my cousin", "the teacher", "my husband", "my wife", "my partner", "my friend", "the landlord",
          "my grandpa", "my aunt", "the new guy", "my colleague", "our son", "our daughter"]
PLACES = ["the office", "the station", "the pharmacy", "the gym", "the bank", "the school", "the airport",
          "the cafe", "the market", "the park", "the hospital", "the post office", "the garage", "city hall"]
TIMES = ["at nine", "at noon", "at four thirty", "on monday", "on friday", "next week", "tomorrow morning",
         "this evening", "after lunch", "before dinner", "in an hour", "on the weekend", "at ten fifteen"]
THINGS = ["the laptop", "the car", "the washing machine", "the phone", "the printer", "the heater", "the wifi",
          "the dishwasher", "the elevator", "the scanner", "the website", "the coffee machine", "the remote",
          "the bike", "the router", "the fridge"]
ERRANDS = ["pick up the dry cleaning", "buy bread", "water the plants", "call the insurance company",
           "renew my passport", "drop off the forms", "book a table", "return the library books",
           "fill up the tank", "pay the electricity bill", "walk the dog", "take out the recycling"]
GOOD_NEWS = ["won the cup", "got the promotion", "got engaged", "got the apartment", "got tickets to the final",
             "won the contest", "got the scholarship", "sold the first painting", "got the part in the play",
             "closed the deal", "qualified for the finals", "got the visa"]
TRIPS = ["the trip to iceland", "the festival", "the game on saturday", "our honeymoon", "the road trip",
         "the show tonight", "the first day at the new job", "the camping weekend", "the big match",
         "the premiere", "the ski trip"]
LOSSES = ["my grandfather", "our old cat", "my uncle", "my best friend", "our dog", "my grandma", "my mentor"]
NICE = ["lovely", "wonderful", "really nice", "so kind", "beautiful", "delightful", "great", "perfect"]
FOODS = ["the pie", "the pasta", "the cake", "this tea", "the dinner", "the cookies", "your soup"]
INSULTS = ["an idiot", "a liar", "a coward", "useless", "pathetic", "a cheat", "a thief", "disgusting"]

TEMPLATES: dict[str, list[str]] = {
    "neutral": [
        "the appointment is {time}", "{person} will be at {place} {time}", "i need to {errand} {time}",
        "can you {errand} on your way home", "{place} is two blocks past the bridge", "the meeting moved to {time}",
        "i put {thing} back in the cupboard", "we can talk about it {time}", "the bus to {place} runs every twenty minutes",
        "did you remember to {errand}", "{person} asked if we could meet {time}", "there are four of us for dinner",
        "the form goes to {place}", "i think {person} takes the train", "it is on the third shelf on the left",
        "let me know what time works for you", "we are out of milk", "the lecture starts {time}",
        "i will call you {time}", "{person} is working from home today", "could you forward me the address",
        "the invoice number is at the top of the page", "i'll have the chicken please", "it takes about an hour by car",
        "either option is fine with me", "the parking lot is behind {place}", "i read the article this morning",
        "she said she would be there {time}", "what time does {place} close", "we switched to a different phone plan",
        "the tickets are in the drawer", "he usually runs in the morning", "i have a call {time}",
        "the weather is supposed to be cloudy {time}", "sure, i can send it {time}", "no, i haven't checked yet",
        "it doesn't matter to me, whatever you prefer", "nothing special, just a normal day",
        "i'm not sure, i'll ask {person}", "the kids have swimming practice {time}",
        "{person} borrowed {thing} yesterday", "the shop is next to {place}", "we should book the rooms soon",
    ],
    "happy": [
        "thank you, this is {nice}", "i'm so glad {person} could come", "what a {nice} day this has been",
        "it was {nice} to catch up with {person}", "{food} is {nice}, thank you", "i really love this place",
        "{person} surprised me with breakfast, it was so sweet", "i feel really good today",
        "thanks for everything, i really appreciate it", "i'm happy we finally met", "you made my day",
        "we had such a {nice} evening together", "i'm so grateful for you", "this is exactly what i wanted, thank you",
        "it feels good to relax at home", "i'm really pleased with how it went", "that's very thoughtful of you",
        "i'm proud of you", "{person} called just to say hi and it made me smile", "what a relief, it all worked out",
        "the doctor said everything is fine, i'm so relieved", "i love how cozy this is", "i had a {nice} time, thank you",
        "it's nice to see you smiling again", "i'm not worried anymore, everything is fine",
        "honestly i couldn't be happier with it", "we laughed all evening, it was {nice}",
        "i'm content with how things are", "the garden looks {nice} this year", "you're so sweet to remember",
        "i feel lucky to have friends like you", "it warms my heart to see everyone together",
        "the weekend at the lake was {nice}", "i'm happy with my new apartment", "thank you for being so patient with me",
    ],
    "sad": [
        "{loss} died last week", "i miss {loss} every day", "we had to say goodbye to {loss}", "i feel so lonely",
        "{person} left and i don't think she's coming back", "i don't feel like doing anything anymore",
        "i've been crying all day", "nobody called me on my birthday", "i feel like i've lost everything",
        "it hurts that {person} forgot about me", "the funeral is {time}", "i'm heartbroken", "i just feel empty",
        "i didn't get the job and i feel worthless", "{person} is in the hospital and it doesn't look good",
        "we broke up last night", "i can't stop thinking about {loss}", "i wish things were the way they used to be",
        "the apartment is so quiet since {person} moved out", "i'm not okay, i really miss them",
        "there's no point anymore", "i feel so down lately", "it's hard to get out of bed these days",
        "everyone has someone except me", "i keep looking at old photos of {loss}", "i let everyone down",
        "i don't have anyone to talk to", "i lost the baby", "{person} doesn't want to see me anymore",
        "i haven't smiled in weeks", "my marriage is over", "we never got to say goodbye",
        "i failed the exam again and i feel hopeless", "it's our first christmas without {loss}",
    ],
    "angry": [
        "get out of here", "how dare you", "you lied to me", "don't you ever do that again", "you're {insult}",
        "i'm sick of your lies", "who do you think you are", "shut up", "you broke {thing} and you didn't even tell me",
        "this is unacceptable, i want to speak to the manager", "you had no right to do that",
        "stay away from my family", "i'm so angry at {person}", "leave me alone", "i'll never forgive you",
        "don't you dare talk to me like that", "you ruined my life", "keep your hands off my stuff",
        "you went through my phone", "you betrayed me", "i hate you", "i can't stand you", "that's a disgrace",
        "stop lying", "get out of my house", "you did this on purpose", "you're not listening to me, are you",
        "you took my money and now you deny it", "how could you do this to me", "answer me when i'm talking to you",
        "this is outrageous", "get lost", "what the hell is wrong with you", "you embarrassed me in front of everyone",
        "i told you a hundred times, don't touch {thing}", "i want you gone by tonight",
    ],
    "excited": [
        "we {good}", "i {good}", "{person} {good}", "i can't wait for {trip}", "we're going to {trip}",
        "oh my god, {trip} is tomorrow", "this is incredible", "this is the best news ever", "i'm so pumped",
        "guess what, we {good}", "we did it, we actually did it", "look, it's snowing, let's go sledding",
        "tomorrow is {trip} and i can barely sleep", "i'm getting a puppy", "we're having twins",
        "they chose me", "yes, we made it to the final", "wow, this is amazing", "hurry, it's about to start",
        "i just found out we {good}", "this is going to be epic", "i'm going to be a dad",
        "we're moving to a new city and i can't wait", "only two more days until {trip}", "let's celebrate tonight",
        "we're going on tour", "i won", "no way, you got us tickets", "our team won in overtime",
        "i finally {good}", "this is huge, we {good}", "my first day at the new job is tomorrow and i can't wait",
    ],
    "frustrated": [
        "{thing} stopped working again", "i've been waiting for an hour", "why won't {thing} turn on",
        "i've tried everything and it still doesn't work", "{person} still hasn't called me back",
        "i keep getting the same error", "this is the third time {thing} broke this month",
        "i can't figure out this form", "the queue at {place} hasn't moved in forty minutes", "ugh, not again",
        "i missed the bus again", "they keep sending me to another department", "nothing is going right today",
        "i've asked {person} twice and nothing happens", "i'm stuck and i don't know what else to try",
        "i can't get this to work", "the train is delayed again", "i'm tired of fixing the same problem",
        "why is this so complicated", "they lost my paperwork again", "i can't concentrate with all this noise",
        "i've been trying to reach {place} all day", "the update broke {thing}", "this makes no sense",
        "i keep losing my glasses", "every time i try to log in it fails", "i'm so tired of waiting",
        "the deadline moved up and i'm nowhere near done", "i've redone this five times", "it's still not fixed",
        "the refund still hasn't come through", "i'm running late because of the traffic",
        "i can't find the charger anywhere", "the instructions don't match the parts",
    ],
}

PREFIXES = ["", "", "", "", "", "oh, ", "well, ", "honestly, ", "you know, ", "look, ", "okay, ", "so ", "man, "]
SLOTS = {"person": PEOPLE, "place": PLACES, "time": TIMES, "thing": THINGS, "errand": ERRANDS, "good": GOOD_NEWS,
         "trip": TRIPS, "loss": LOSSES, "nice": NICE, "food": FOODS, "insult": INSULTS}
_SLOT = re.compile(r"\{(\w+)\}")


def everyday_sentence(label: str, rng: np.random.Generator) -> str:
    """One everyday sentence of class ``label``: a template of the class, slots filled, maybe a prefix,
    ended with ``.``, ``!`` or ``?`` as the class and template suggest."""
    templates = TEMPLATES[label]
    text = templates[rng.integers(len(templates))]
    text = _SLOT.sub(lambda m: SLOTS[m.group(1)][rng.integers(len(SLOTS[m.group(1)]))], text)
    text = PREFIXES[rng.integers(len(PREFIXES))] + text
    question = text.split(",")[-1].strip().split(" ")[0] in {"can", "could", "did", "what", "why", "who", "how"}
    end = "?" if question else ("!" if label in ("angry", "excited") and rng.random() < 0.6 else ".")
    return text + end


__all__ = ["TEMPLATES", "everyday_sentence"]
