"""Regenerate the embedded Bengali speech sample, data/samples/bengali_speech/, with espeak-ng.

The `asr` task must run with no data attached, so Baton ships a few hundred short clips of
synthetic Bengali speech laid out like the Bengali.AI Speech Recognition competition:
`train.csv` (id, sentence, split), `train_mp3s/{id}.mp3`, and a small `test_mp3s/` folder whose
transcripts live apart in `test_references.csv`. Training and inference never need this script;
it documents how the committed clips were made and remakes them.

Needs the espeak-ng program (Debian/Ubuntu: `apt-get install espeak-ng`; the committed clips
were made with espeak-ng 1.51) and soundfile with libsndfile >= 1.1 (MP3 writing). Run from the
repository root:

    python data/make_bengali_speech.py            # rewrites data/samples/bengali_speech/

Everything random comes from one seeded generator, so a rerun with the same espeak-ng and
libsndfile versions writes byte-identical files.

The sentences are our own: 66 hand-written everyday sentences plus sentences composed from eight
templates (subject + time/place/food/thing + verb). Split policy:
- train: every hand-written sentence spoken 3 times and 100 template sentences spoken twice, each
  time by a different voice;
- valid: (a) train sentences spoken by voice/speed/pitch combinations that no train clip uses,
  and (b) template sentences never in train whose every word is in train. So valid measures
  speaker generalisation and new word orders, not new vocabulary, which keeps it learnable by a
  tiny model trained for minutes on a CPU;
- test: the same recipe as valid, smaller, with no transcripts next to the audio.
"""

import argparse
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SEED = 2024
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "bengali_speech")
SAMPLE_RATE = 16_000

# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------

# Hand-written, everyday Bengali (Bangladeshi usage: পানি for water). No digits: espeak reads
# them as words, and learning number words -> digit characters is not what this sample is for.
FIXED = [
    "আমার নাম রাজু।", "তোমার নাম কী?", "তুমি কেমন আছ?", "আমি ভালো আছি।",
    "এটার দাম কত টাকা?", "আমি বাংলায় কথা বলি।", "আজ আকাশ পরিষ্কার।", "বাইরে খুব বৃষ্টি হচ্ছে!",
    "দয়া করে দরজাটা বন্ধ করো।", "আমি এক গ্লাস পানি চাই।", "ট্রেন কখন ছাড়বে?", "বাসটা অনেক দেরি করেছে।",
    "আমার খুব ক্ষুধা লেগেছে।", "চলো, আমরা মাঠে খেলি!", "তুমি কোথায় যাচ্ছ?", "আমি বাড়ি যাচ্ছি।",
    "আজ কী বার?", "আজ শুক্রবার।", "মা রান্নাঘরে রান্না করছেন।", "বাবা খবরের কাগজ পড়ছেন।",
    "নদীর পানি খুব ঠান্ডা।", "গাছে অনেক পাখি বসে আছে।", "আমাদের গ্রামে একটা বড় পুকুর আছে।",
    "ধন্যবাদ, আবার দেখা হবে!", "শুভ সকাল!", "তুমি কি চা খাবে?", "হ্যাঁ, এক কাপ চা দাও।",
    "না, আমি কফি খাই না।", "বইটা টেবিলের উপরে আছে।", "আমার ফোনটা কোথায়?", "আজ রাতে আকাশে চাঁদ উঠেছে।",
    "শীতকালে খুব কুয়াশা পড়ে।", "আমরা কাল সকালে ঢাকায় যাব।", "ডাক্তার কখন আসবেন?",
    "দোকানটা সন্ধ্যায় বন্ধ হয়।", "এই রাস্তাটা খুব লম্বা।", "আমি প্রতিদিন সকালে হাঁটি।", "তোমার বাড়ি কোথায়?",
    "আমার বাড়ি চট্টগ্রামে।", "ক্লাস শুরু হয়ে গেছে!", "সাবধানে রাস্তা পার হও।", "আমি তোমাকে সাহায্য করব।",
    "এটা আমার প্রিয় গান।", "ছুটির দিনে আমরা বেড়াতে যাই।", "বিড়ালটা দুধ খাচ্ছে।", "কুকুরটা জোরে ডাকছে!",
    "ফুলগুলো খুব সুন্দর।", "তুমি কি আমার কথা শুনতে পাচ্ছ?", "আমি ইংরেজি একটু একটু বুঝি।",
    "আজকের খেলায় আমরা জিতেছি!", "মাছটা খুব তাজা।", "বাজারে আজ অনেক ভিড়।", "তুমি কখন ঘুমাতে যাও?",
    "আমি রাতে তাড়াতাড়ি ঘুমাই।", "পরীক্ষা কেমন হলো?", "পরীক্ষা ভালো হয়েছে।", "জানালাটা খুলে দাও।",
    "আমার মাথা ব্যথা করছে।", "এখন কয়টা বাজে?", "এখন সকাল আটটা বাজে।",
    "\"চুপ করো!\" বলে শিক্ষক রেগে গেলেন।", "সে রোজ বিকেলে ক্রিকেট খেলে।", "আমাদের দেশের নাম বাংলাদেশ।",
    "পদ্মা একটি বড় নদী।", "বাচ্চারা উঠানে খেলছে।", "আমি কি ভেতরে আসতে পারি?",
]

# Templates: third-person subjects only, so one verb form fits every subject.
SLOTS = {
    "S": ["মা", "বাবা", "রাজু", "সীমা", "দাদু", "আমার বোন", "আমার ভাই", "শিক্ষক", "ছেলেটি", "মেয়েটি"],
    "food": ["ভাত", "মাছ", "রুটি", "ডাল", "আম", "কলা", "মিষ্টি", "ডিম", "দই"],
    "time": ["আজ", "প্রতিদিন", "সকালে", "বিকেলে", "রাতে"],
    "place": ["বাজারে", "স্কুলে", "অফিসে", "বাড়িতে", "নদীতে", "মাঠে", "গ্রামে"],
    "thing": ["বই", "কলম", "জামা", "ছাতা", "খাতা", "ঘড়ি"],
    "num": ["একটি", "দুটি", "তিনটি", "চারটি", "পাঁচটি"],
    "adj": ["খুশি", "ক্লান্ত", "ব্যস্ত", "অসুস্থ"],
}
TEMPLATES = [
    "{S} {food} খায়।",
    "{S} {time} {place} যায়।",
    "{S} কি {food} খায়?",
    "{S} একটি {thing} কেনে।",
    "{S} কোথায় যায়?",
    "{S} {time} গান গায়।",
    "আমার {num} {thing} আছে।",
    "{S} খুব {adj}!",
]

# How many clips of each kind (see the module docstring for the policy).
TRAIN_TEMPLATE_SENTENCES = 100
FIXED_REPEATS, TEMPLATE_REPEATS = 3, 2
VALID_SEEN, VALID_UNSEEN = 36, 16
TEST_SEEN, TEST_UNSEEN = 14, 6

# ---------------------------------------------------------------------------------------------
# Voices: 13 espeak-ng variants x 5 speed bands x 5 pitch bands = 325 combinations
# ---------------------------------------------------------------------------------------------

VOICES = [f"bn+m{i}" for i in range(1, 8)] + [f"bn+f{i}" for i in range(1, 6)] + ["bn+klatt"]
SPEED_BANDS = [(140, 154), (154, 168), (168, 182), (182, 196), (196, 210)]  # words per minute
PITCH_BANDS = [(25, 35), (35, 45), (45, 55), (55, 65), (65, 75)]  # espeak's 0..99 scale
HELD_OUT_FRACTION = 0.2  # of the combinations, used only by valid and test clips


def all_sentences_of(template):
    """Every sentence a template makes, in a fixed order."""
    names = [n for n in SLOTS if "{" + n + "}" in template]
    sentences = [template]
    for name in names:
        sentences = [s.replace("{" + name + "}", w, 1) for s in sentences for w in SLOTS[name]]
    return sentences


def words(sentence):
    return "".join(c if unicodedata.category(c)[0] != "P" else " " for c in sentence).split()


def plan(rng):
    """The list of clips to make: dicts with sentence, split, voice, speed, pitch, seen."""
    combos = [(v, s, p) for v in range(len(VOICES)) for s in range(len(SPEED_BANDS)) for p in range(len(PITCH_BANDS))]
    order = rng.permutation(len(combos))
    held = {combos[i] for i in order[: int(HELD_OUT_FRACTION * len(combos))]}
    train_combos = [c for c in combos if c not in held]
    held_combos = [c for c in combos if c in held]

    templated = [s for t in TEMPLATES for s in all_sentences_of(t)]
    templated = [templated[i] for i in rng.permutation(len(templated))]
    train_templated = templated[:TRAIN_TEMPLATE_SENTENCES]
    train_sentences = FIXED + train_templated
    train_words = {w for s in train_sentences for w in words(s)}
    # Unseen sentences for valid/test: new combinations of words the model has heard in train.
    unseen = [s for s in templated[TRAIN_TEMPLATE_SENTENCES:] if set(words(s)) <= train_words]
    if len(unseen) < VALID_UNSEEN + TEST_UNSEEN:
        sys.exit("too few unseen template sentences use only train words; change the counts")

    def draw(combo_pool, avoid=()):
        while True:
            v, s, p = combo_pool[rng.integers(len(combo_pool))]
            if v not in avoid:
                return v, int(rng.integers(*SPEED_BANDS[s])), int(rng.integers(*PITCH_BANDS[p]))

    clips = []
    voices_of = {}  # sentence -> voices that already spoke it (each repeat gets a new voice)
    for sentence in train_sentences:
        for _ in range(FIXED_REPEATS if sentence in FIXED else TEMPLATE_REPEATS):
            v, speed, pitch = draw(train_combos, avoid=voices_of.setdefault(sentence, set()))
            voices_of[sentence].add(v)
            clips.append(dict(sentence=sentence, split="train", voice=VOICES[v], speed=speed, pitch=pitch, seen=True))

    seen_pick = rng.permutation(len(train_sentences))[: VALID_SEEN + TEST_SEEN]
    for k, i in enumerate(seen_pick):
        sentence = train_sentences[i]
        v, speed, pitch = draw(held_combos, avoid=voices_of[sentence])
        split = "valid" if k < VALID_SEEN else "test"
        clips.append(dict(sentence=sentence, split=split, voice=VOICES[v], speed=speed, pitch=pitch, seen=True))
    for k, sentence in enumerate(unseen[: VALID_UNSEEN + TEST_UNSEEN]):
        v, speed, pitch = draw(held_combos)
        split = "valid" if k < VALID_UNSEEN else "test"
        clips.append(dict(sentence=sentence, split=split, voice=VOICES[v], speed=speed, pitch=pitch, seen=False))
    for clip in clips:
        # Store text in NFC, the form data/audio.py normalises to (note: NFC *decomposes* য় ড় ঢ়).
        clip["sentence"] = unicodedata.normalize("NFC", clip["sentence"])
        key = f"{clip['sentence']}|{clip['voice']}|{clip['speed']}|{clip['pitch']}"
        clip["id"] = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]  # like the competition's ids
    return sorted(clips, key=lambda c: c["id"])  # rows in id order, as in the competition's CSV


# ---------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------

def synthesize(sentence, voice, speed, pitch):
    """espeak-ng -> float32 mono at 16 kHz, with the long trailing silence trimmed."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", sentence]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")  # espeak-ng writes 22,050 Hz 16-bit
    # espeak ends every utterance with ~0.35 s of silence; keep 0.15 s of it (smaller files).
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    audio = audio[: min(len(audio), loud[-1] + int(0.15 * rate))]
    audio = AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    return np.clip(audio, -1.0, 1.0)


def write_mp3(path, audio):
    # Constant 40 kbit/s: small files, no encoder gap at this rate (the decoded length equals
    # the written length), and a fixed bitrate makes file size a good duration estimate.
    sf.write(path, audio, SAMPLE_RATE, format="MP3", compression_level=0.8, bitrate_mode="CONSTANT")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=OUT, help="output folder (default: the embedded sample's)")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install espeak-ng)")

    clips = plan(np.random.Generator(np.random.PCG64(SEED)))
    for folder in ("train_mp3s", "test_mp3s"):
        shutil.rmtree(os.path.join(args.out, folder), ignore_errors=True)
        os.makedirs(os.path.join(args.out, folder))
    seconds = {"train": 0.0, "valid": 0.0, "test": 0.0}
    for clip in clips:
        audio = synthesize(clip["sentence"], clip["voice"], clip["speed"], clip["pitch"])
        folder = "test_mp3s" if clip["split"] == "test" else "train_mp3s"
        write_mp3(os.path.join(args.out, folder, clip["id"] + ".mp3"), audio)
        clip["seconds"] = len(audio) / SAMPLE_RATE
        seconds[clip["split"]] += clip["seconds"]

    def write_csv(name, rows, fields):
        with open(os.path.join(args.out, name), "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    write_csv("train.csv", [c for c in clips if c["split"] != "test"], ["id", "sentence", "split"])
    test = [dict(c, path=f"test_mp3s/{c['id']}.mp3") for c in clips if c["split"] == "test"]
    write_csv("test_references.csv", test, ["id", "path", "sentence"])  # a manifest: read_manifest reads it
    for c in clips:
        c["sentence_in_train"] = "yes" if c["seen"] else "no"
        c["seconds"] = f"{c['seconds']:.2f}"
    write_csv("voices.csv", clips, ["id", "split", "voice", "speed", "pitch", "sentence_in_train", "seconds"])

    for split in ("train", "valid", "test"):
        mine = [c for c in clips if c["split"] == split]
        print(f"{split}: {len(mine)} clips, {len({c['sentence'] for c in mine})} sentences, "
              f"{seconds[split] / 60:.1f} min, {sum(not c['seen'] for c in mine)} with sentences not in train")
    size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(args.out) for f in fs)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
