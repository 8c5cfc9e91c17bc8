"""An hour (or more) of speech-like audio with no wake word in it, for the false-wake count
(bench/falsewake.py): espeak-ng voices at several speeds and Piper reading varied text made
from a seed (a small grammar of TV, radio and room talk, with lines near the wake phrase:
"hey Travis", "and Jarvis said"), the board's own replies in its Piper voice, music-like
chords under a third of the lines. Made once and cached outside the repository
(`~/.cache/loomd-bench/`, keyed by a hash of this file, the seed, the length and the voices),
since synthesising an hour takes minutes of CPU."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench.tvnoise import RATE, espeak_pcm, music, speech_power, trim

OPENERS = ["", "", "", "well, ", "so ", "you know, ", "okay, ", "right, ", "and ", "but ",
           "hey, ", "hey there, ", "listen, ", "honestly, ", "I mean, ", "look, "]  # fmt: skip
SUBJECTS = ["the mayor", "my brother", "the team", "our neighbours", "the council", "she",
            "he", "they", "we", "the weather service", "the new manager", "the kids",
            "a spokesperson for the company", "the museum", "the police", "my sister",
            "the doctor", "the chef", "the coach", "everyone at work", "the landlord",
            "the band", "the minister", "the scientists", "our guest tonight"]  # fmt: skip
VERBS = ["said they would", "decided to", "promised to", "want to", "forgot to",
         "are going to", "tried to", "will probably", "refused to", "might", "had to",
         "plan to", "never managed to", "are about to", "agreed to"]  # fmt: skip
ACTIONS = ["fix the car", "open the new bridge", "cut the budget", "paint the kitchen",
           "cancel the match", "close the road", "move the meeting to Friday",
           "raise the prices again", "buy a bigger house", "cook dinner for twelve",
           "finish the report", "call the plumber", "visit their grandmother",
           "sell the old piano", "plant tomatoes in the garden", "book the tickets",
           "walk the dog", "win the league", "repair the roof", "record a new album",
           "water the plants", "change the locks", "rent a cabin by the lake",
           "clean out the garage", "learn to play the guitar"]  # fmt: skip
TIMES = ["", "", "tomorrow", "next week", "on Saturday", "after the holidays", "this evening",
         "before the end of the month", "in the spring", "right after lunch", "at eight",
         "once the rain stops", "later tonight", "first thing in the morning"]  # fmt: skip
REMARKS = ["which nobody expected", "and that was that", "but I am not sure", "as usual",
           "if you can believe it", "and the crowd loved it", "so we will see",
           "which is a shame", "and honestly it was about time", "but the weather said no",
           "according to the radio", "and then it started raining"]  # fmt: skip
QUESTIONS = ["did you see the game last night", "what do you want for dinner",
             "have you seen my keys anywhere", "is it going to rain tomorrow",
             "can you turn that down a bit", "who left the door open",
             "when does the film start", "where did you put the remote",
             "how was your day at work", "do we still have milk",
             "are you coming to the party on Sunday", "what time is it in Tokyo"]  # fmt: skip
NEAR = ["hey Travis, are you coming to the game on Sunday",
        "and then Jarvis said he would fix the car himself",
        "hey, Jar, this is the last of the jam", "hey Harvey, turn that music down a bit",
        "a jar of this honey costs more than the whole lunch",
        "Jeremy said hey to the neighbours and went inside",
        "hey Jarrod, pass me the salt", "the service was slow but the food was worth it",
        "hey, Marvin, is that you", "Jarvis Cocker was on the radio this morning",
        "hey guys, dinner is ready", "they parked the jeep by the jetty",
        "hey Davis, nice to see you", "hey, it's Mavis from next door"]  # fmt: skip
REPLIES = ["Turned on the kitchen lights.", "Turned off the living room lights.",
           "The garage door is closed.", "It is twenty one degrees inside.",
           "Tomorrow will be cloudy with a chance of rain, and a high of fourteen degrees.",
           "Timer set for five minutes.", "Your timer is done.",
           "Sorry, I couldn't understand that.", "Playing some jazz in the living room.",
           "The front door is locked.", "It is seven thirty.",
           "I set the thermostat to twenty degrees.", "There are no events on your calendar today.",
           "The washing machine has finished.", "Okay, I will remind you at six."]  # fmt: skip
ESPEAK_VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m4", "en-029",
                 "en-gb-scotland+f2", "en-us+f2", "en-gb+m3", "en-us+m7"]  # fmt: skip


def sentence(rng: np.random.Generator) -> str:
    """One line of talk: a statement, a question or a line near the wake phrase."""
    pick = rng.random()
    if pick < 0.12:
        return str(rng.choice(NEAR))
    if pick < 0.3:
        return str(rng.choice(OPENERS)) + str(rng.choice(QUESTIONS))
    parts = [str(rng.choice(OPENERS)) + str(rng.choice(SUBJECTS)), str(rng.choice(VERBS)),
             str(rng.choice(ACTIONS)), str(rng.choice(TIMES))]  # fmt: skip
    if rng.random() < 0.4:
        parts.append(", " + str(rng.choice(REMARKS)))
    return re.sub(r"\s+,", ",", " ".join(p for p in parts if p))


def has_wake(text: str) -> bool:
    return re.search(r"\bhey\W+jarvis\b", text, re.IGNORECASE) is not None


def _key(seconds: float, seed: int, piper_voices: list[str]) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(__file__).with_name("tvnoise.py").read_bytes())
    h.update(repr((seconds, seed, piper_voices)).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("LOOMD_BENCH_CACHE") or str(Path.home() / ".cache" / "loomd-bench")
    return Path(root)


def chatter(seconds: float, seed: int, pipers: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """`seconds` of talk with no wake word (s16le 16 kHz), and what is in it. `pipers`:
    Piper voices by name (the board's voice reads the replies). Cached."""
    key = _key(seconds, seed, sorted(pipers))
    path = cache_dir() / f"chatter-{key}.pcm"
    if path.is_file():
        return path.read_bytes(), {"cached": str(path)}
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n)
    at, lines, kinds = 0, 0, {"espeak": 0, "piper": 0, "reply": 0, "near": 0}
    names = sorted(pipers)
    while at < n:
        pick = rng.random()
        if pipers and pick < 0.1:
            text, kind = str(rng.choice(REPLIES)), "reply"
            pcm = pipers[names[0]].synthesize(text)
        else:
            text = sentence(rng)
            assert not has_wake(text), text
            if pipers and pick < 0.45:
                kind = "piper"
                pcm = pipers[names[int(rng.integers(len(names)))]].synthesize(text)
            else:
                kind = "espeak"
                voice = ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))]
                pcm = espeak_pcm(text, voice, speed=int(rng.integers(130, 195)))
        kinds[kind] += 1
        kinds["near"] += text in NEAR
        lines += 1
        x = np.frombuffer(trim(pcm), np.int16).astype(np.float64)
        # levels vary by 12 dB between lines, as a room's talkers and a TV's shots do
        x = x / np.sqrt(speech_power(trim(pcm))) * 3000.0 * 10 ** (rng.uniform(-6, 6) / 20)
        take = min(len(x), n - at)
        out[at : at + take] += x[:take]
        if rng.random() < 0.33:
            chords = music((take + 1) / RATE, int(rng.integers(1 << 30)))
            out[at : at + take] += chords[:take] * 600
        at += take + int(rng.uniform(0.15, 1.2) * RATE)
    pcm_out = np.clip(out, -32768, 32767).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pcm_out)
    tmp.replace(path)
    return pcm_out, {"made": str(path), "lines": lines, **kinds}
