"""Training samples that teach retrieval, not a template (issue 21): quest's 32K test model learns from them.

Every sample is a token sequence of exactly the asked length with a mask of the answer tokens (the keys the
model must copy). Kinds: plain book text; passkeys hidden in book text or repeated filler, in many
phrasings and layouts, with distractor facts; key-value lists; two-hop lookups. Pure Python: tokens come
from any `encode(str) -> list[int]`, so the generator is tested without a GPU (tools/test_retrieval_data.py).

Held out entirely (the evaluation's): the phrasings of `src/eval/passkey-templates.json` ('heldout'), whose
key names and frames this generator never writes (checked on every template at import and on every sample
in the tests), and the books `pride_and_prejudice.txt` and `tinyshakespeare.txt` (never passed in).
"""
import json, os, random, re

HERE = os.path.dirname(os.path.abspath(__file__))


# samples of at least this many tokens may ask their questions all through the text (Generator.spread)
SPREAD_FROM = 4096


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


TEMPLATES = json.loads(_read(os.path.join(HERE, "..", "src", "eval", "passkey-templates.json")))
PAPER = TEMPLATES["paper"]
HELDOUT_BOOKS = ("pride_and_prejudice.txt", "tinyshakespeare.txt")
HELDOUT_PHRASES = [p.lower() for p in TEMPLATES["heldoutNames"] + TEMPLATES["heldoutFrames"]]

# what is being remembered (never a held-out name: checked below)
KEY_NAMES = ["pass key", "passkey", "secret code", "access code", "magic number", "password", "special number",
             "secret number", "door code", "ticket number", "serial number", "confirmation code", "lucky number",
             "room number", "account number", "code word", "secret word", "PIN", "key", "hidden number",
             "identification number", "order number", "gate code", "phone extension", "badge number"]
OWNERS = ("Anna Boris Clara Dmitri Elena Fyodor Galina Hugo Irene Jonas Karl Lena Marco Nadia Oscar Petra Quentin "
          "Rosa Stefan Tanya Ulrich Vera Walter Xenia Yuri Zoe Alba Bruno Cora Dario Edith Felix Greta Henrik Ines "
          "Jakob Kira Luca Mila Nils Olga Pavel Rita Sven Tilda Umberto Vito Wanda").split()
INTROS = ["", PAPER["intro"], "Read the following text and remember the important facts in it.",
          "There is a secret hidden in this text.", "Pay attention to any numbers you see below.",
          "The following text contains information you will be asked about.", "Find the key fact in the text below.",
          "Below is a long text. Somewhere inside it there is something to remember."]
# needle frames: {N} the key's name, {K} the key
NEEDLES = [" The {N} is {K}.", PAPER["needle"].replace("pass key", "{N}").replace("{key}", "{K}"), " {Ncap}: {K}.",
           " Remember this {N}: {K}.", " My {N} is {K}.", " Note that the {N} is {K}.",
           " Please memorize the {N}, which is {K}.", " {K} is the {N}.", " The {N} you will need later is {K}.",
           " Here is the {N}: {K}.", " Keep in mind: {N} = {K}.", " IMPORTANT - {N}: {K}", " The {N} was set to {K}.",
           " Write down the {N}. It is {K}.", " I will tell you the {N} now. It is {K}.", " The {N}? It is {K}.",
           " Your {N} is {K}, do not lose it.", " It was decided that the {N} would be {K}."]
# question frames, each ending right before the answer's " {K}"
QUESTIONS = [" What is the {N}? The {N} is", "\nQuestion: What is the {N}?\nAnswer: The {N} is",
             " Tell me the {N}. The {N} is", " Do you remember the {N}? It is", " Which {N} was mentioned above? It was",
             " Recall the {N} from the text. The {N} is", " What was the {N}? Answer:", " The {N} mentioned in the text is",
             " Quick quiz: the {N}? It was", "\n\nWhat is the {N}?\n", " Now say the {N}. The {N} is",
             " What {N} did you read? The {N} is", "\n{Ncap}:"]
# composed names: a modifier and a noun (about 1,000 names; never a held-out one: checked at import)
MODIFIERS = ("secret hidden private special magic lucky emergency backup master personal office garage bank storage "
             "club library hotel museum ferry tram radio member project order invoice customer patient flight train "
             "cabin studio workshop garden kitchen school gym parking mailbox safe door gate alarm wifi account "
             "voucher coupon prize lottery seat table room desk badge staff guest").split()
NOUNS = ["number", "code", "key", "password", "word", "PIN", "ID", "tag", "phrase", "value", "figure", "serial",
         "identifier", "pass", "ticket", "digits", "cipher", "token"]
# needle = lead-in + relation + trailer; question = lead-in + ask + answer prefix (the key follows it)
NEEDLE_LEADS = ["", "Note: ", "Remember: ", "By the way, ", "Attention: ", "Important: ", "P.S. ", "For your information, ",
                "Listen carefully. ", "One more thing: ", "Hint: ", "Keep this in mind: "]
RELATIONS = ["the {N} is {K}", "{N}: {K}", "{N} = {K}", "the {N} was set to {K}", "my {N} is {K}", "your {N} is {K}",
             "the {N}, which is {K}", "{K} is the {N}", "the {N} has the value {K}", "keep the {N} ({K}) safe",
             "the {N} will be {K}", "we chose {K} as the {N}", "use {K} as the {N}", "the {N} is now {K}",
             "{N} - {K}", "the correct {N} is {K}"]
NEEDLE_TRAILS = [".", ". Remember it.", ". Do not forget it.", ", keep it safe.", "", "!", ". Write it down."]
QUESTION_LEADS = ["", "\n", "\n\nQuestion: ", "Q: ", "Now, ", "Quiz: ", "\nTask: ", "Finally: "]
ASKS = ["What is the {N}?", "Which {N} was given?", "Tell me the {N}.", "What was the {N} mentioned above?",
        "Can you recall the {N}?", "Give the {N}.", "{Ncap}?", "What {N} did the text give?", "Repeat the {N}.",
        "Do you still know the {N}?"]
ANSWER_PREFIXES = [" The {N} is", " It is", " It was", "\nAnswer:", " The {N} was", " The answer is", "\n{Ncap}:",
                   "\nA: The {N} is", " The {N}:"]
# round 2 (session 19): open-vocabulary names and frames. After round 1 the model matched a question to its
# needle only through the 25 listed names and a few fixed frames (held-out phrasings: 22.7%), so names are
# also composed from any two words of the training books, facts are tied by many verbs, wrapped in many
# layouts, and asked in many ways that repeat the name. (The held-out needles' verbs "reads" and "equals"
# and the arrow "->" are left out on purpose: the evaluation must find verbs the model never saw.)
VERBS = ["is", "was", "shows", "comes to", "stands at", "is listed as", "is recorded as", "is given as", "amounts to",
         "was noted as", "is written as", "is marked as", "is printed as", "became", "remains", "is set at",
         "was logged as", "is registered as", "turned out to be", "has become", "is fixed at", "will stay",
         # round 3 (written after the session-19 evaluation: an unseen verb was its weakest case)
         "matches", "corresponds to", "comes out as", "is stated as", "goes by", "runs to", "totals", "is valued at",
         "points to", "is pinned at", "translates to", "is kept as", "was entered as", "is filed under"]
FREE_RELATIONS = ["the {N} {V} {K}", "{N} => {K}", "{N} := {K}", "{N} | {K}", "{K} ({N})", "the {N} ({K})",
                  "we keep the {N}, {K}, on file", "a {N} of {K} was assigned", "they gave me a {N} of {K}",
                  "the {N} on the card {V} {K}", "the {N} for today {V} {K}", "{Ncap} {V} {K}",
                  "someone wrote that the {N} {V} {K}", "the new {N} {V} {K}", "the {N} in question {V} {K}",
                  # asides that set the key off by commas or dashes (round 3)
                  "the {N}, {K}, is on file", "we note the {N}, {K}, here", "the {N} - {K} - was issued",
                  "a {N} ({K}) was issued", "the {N}, namely {K}, stays the same", "they wrote down the {N}, {K}, in the log",
                  "the {N}, that is {K}, was given to us"]
FREE_LEADS = NEEDLE_LEADS + ["Side note: ", "For later: ", "Log entry: ", "Just so you know, ", "Also, ", "Record: ",
                             "Somewhere here: ", "A detail: "]
WRAPS = [("", ""), ("(", ")"), ("[ ", " ]"), ("<< ", " >>"), ("** ", " **"), ('"', '"'), ("{ ", " }"), ("| ", " |"),
         ("# ", ""), ("> ", ""), ("~ ", " ~"), ("-- ", " --")]
FREE_ASKS = ASKS + ["Which number is the {N}?", "Please state the {N}.", "Give the {N} mentioned earlier.",
                    "From the text above, what is the {N}?", "What did the text say the {N} was?", "Name the {N}.",
                    "Which value was given for the {N}?", "A {N} was mentioned before. What was it?",
                    "Look back: what is the {N}?", "Earlier a {N} was mentioned.", "There was a {N} in the text.",
                    "The text is over. State the {N}.", "Search the text for the {N}.", "Report the {N}.",
                    "Which value did the {N} have?", "What is the value of the {N}?", "A {N} was noted above."]
FREE_QUESTION_LEADS = QUESTION_LEADS + ["The reading is over. ", "That is the end of the text. ", "\n\nOne question. ",
                                        "\n\n", "\n>> ", "\nQuestion about the pages above: ", "Okay. "]
FREE_ANSWERS = ANSWER_PREFIXES + [" The {N} {V}", " That {N} is", " The {N} given was", "\nThe {N} is",
                                  " Answer: the {N} is", " It was", " The {N} stated was", " The value is"]
SEPARATORS = [("", ""), ("\n", "\n"), ("\n\n", "\n\n"), ("\n* ", "\n"), (" --", " --"), ("\n\n", ""), ("", "\n")]
REPEATED_FILLER = [" The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
                   " The river flows. The wind blows. The birds sing. The day goes on.",
                   " Nothing happened today. Nothing happened yesterday either.",
                   " One more line of filler text follows this one."]
# key-value lists and two-hop lookups
KV_HEADERS = ["Here is a list of {N}s:", "{Ncap}s of the staff:", "Records ({N}):", "The {N}s are as follows."]
KV_LINES = ["\n{O}: {K}", "\n{O} - {K}", "\nThe {N} of {O} is {K}.", "\n{O} has {N} {K}."]
KV_QUESTIONS = [" What is the {N} of {O}? The {N} of {O} is", "\nQuestion: the {N} of {O}?\nAnswer:",
                " {O}'s {N} is"]
HOP_LINK = [" The {N} of {A} is the same as the {N} of {B}.", " {A} uses the same {N} as {B}."]


def _phrases_ok(text):
    low = text.lower()
    return not any(p in low for p in HELDOUT_PHRASES)


for _t in NEEDLES + QUESTIONS + INTROS + KV_HEADERS + KV_LINES + KV_QUESTIONS + HOP_LINK + KEY_NAMES + REPEATED_FILLER:
    assert _phrases_ok(_t.replace("{N}", "").replace("{Ncap}", "")), f"generator template uses a held-out phrase: {_t!r}"
for _t in (NEEDLE_LEADS + RELATIONS + NEEDLE_TRAILS + QUESTION_LEADS + ASKS + ANSWER_PREFIXES + VERBS + FREE_RELATIONS +
           FREE_LEADS + [a + b for a, b in WRAPS] + FREE_ASKS + FREE_QUESTION_LEADS + FREE_ANSWERS):
    assert _phrases_ok(_t.replace("{N}", "").replace("{Ncap}", "")), f"generator template uses a held-out phrase: {_t!r}"
COMPOSED_NAMES = [f"{m} {n}" for m in MODIFIERS for n in NOUNS if _phrases_ok(f"{m} {n}")]
for _n in KEY_NAMES + COMPOSED_NAMES:
    assert _phrases_ok(_n), f"held-out key name in training names: {_n}"


def fill(template, **kw):
    n = kw.get("N", "")
    return template.replace("{Ncap}", n[:1].upper() + n[1:]).format(**{k: v for k, v in kw.items()})


class Generator:
    """Samples of exactly T tokens: (tokens, answer mask). `books`: token lists of the training books
    (never a held-out one); `words`: a vocabulary for word keys."""

    def __init__(self, encode, books, seed, words=None):
        self.encode, self.books, self.rng = encode, books, random.Random(seed)
        self.weights = [len(b) for b in books]
        self.words = words or ["apple", "river", "candle", "mirror", "falcon", "copper", "meadow", "lantern",
                               "harvest", "pebble", "thunder", "violet", "saddle", "orchard", "marble", "compass"]
        # names of two book words ("orchard compass"): the most frequent words (function words) left out
        self.name_words = [w for w in self.words[150:] if len(w) >= 4] or self.words
        self.cache = {}
        self.texts = []  # (debug) every template text written, for the held-out check in tests

    # ---------------------------------------------------------------- pieces
    def enc(self, s):
        self.texts.append(s)
        if s not in self.cache:
            if len(self.cache) > 200000:
                self.cache.clear()
            self.cache[s] = self.encode(s)
        return list(self.cache[s])

    def key(self, kind=None):
        r = self.rng
        kind = kind or r.choices(["digits", "word", "code"], weights=[6, 2, 2])[0]
        if kind == "digits":
            n = r.choice([4, 5, 5, 5, 6, 7, 8])
            return str(r.randrange(10 ** (n - 1), 10 ** n))
        if kind == "word":
            return r.choice(self.words)
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
        return "".join(r.choice(letters) for _ in range(r.randint(1, 3))) + r.choice(["-", "", "/"]) + str(r.randrange(10, 99999))

    def book(self, n):
        if n <= 0:
            return []
        b = self.rng.choices(self.books, weights=self.weights)[0]
        s = self.rng.randrange(0, max(1, len(b) - n - 1))
        out = list(b[s:s + n])
        while len(out) < n:  # (a book shorter than n: continue with another)
            out += self.book(n - len(out))
        return out

    def filler(self, n):
        """Book text mostly; else a repeated line (the paper's kind) or a soup of short sentences of book
        words (less text the model can memorise: the books are small)."""
        if n <= 0:
            return []
        r = self.rng.random()
        if r < 0.6:
            return self.book(n)
        if r < 0.8:
            unit = self.enc(self.rng.choice(REPEATED_FILLER))
            return (unit * (n // len(unit) + 1))[:n]
        out = []
        while len(out) < n:
            w = self.rng.sample(self.words, 3)
            t = self.rng.choice([" The {} was {}.", " A {} and a {}.", " {} {} {}.", " Every {} has its {}."]).format(*w).capitalize()
            if _phrases_ok(t):
                out += self.encode(t)
        return out[:n]

    def names(self, k):
        """k different key names: the listed ones or (half the time) composed ones."""
        out = []
        while len(out) < k:
            r = self.rng.random()
            if r < 0.35:
                n = self.rng.choice(KEY_NAMES)
            elif r < 0.65:
                n = self.rng.choice(COMPOSED_NAMES)
            else:  # open vocabulary: two book words, or a book word and a listed noun
                n = self.rng.choice(self.name_words) + " " + (self.rng.choice(self.name_words) if r < 0.85 else self.rng.choice(NOUNS))
            if n not in out and _phrases_ok(n):
                out.append(n)
        return out

    def needle(self, nm, k):
        """A listed needle frame, a composed one, or an open one (any verb, layout); never a held-out phrase."""
        while True:
            t = self._needle(nm, k)
            if _phrases_ok(t):
                return t

    def _needle(self, nm, k):
        r = self.rng
        x = r.random()
        if x < 0.4:
            lead, (a, b) = r.choice(FREE_LEADS), r.choice(WRAPS)
            t = r.choice(FREE_RELATIONS)
            rel = fill(t.replace("{V}", r.choice(VERBS)), N=nm, K=k)
            if (not lead or lead.endswith((". ", ": "))) and not t.startswith("{K}"):  # (a sentence start, not a key)
                rel = rel[:1].upper() + rel[1:]
            return " " + a + lead + rel + r.choice(NEEDLE_TRAILS) + b
        if x < 0.65:
            return fill(r.choice(NEEDLES), N=nm, K=k)
        t, lead = r.choice(RELATIONS), r.choice(NEEDLE_LEADS)
        rel = fill(t, N=nm, K=k)
        if (not lead or lead.endswith((". ", ": "))) and not t.startswith("{K}"):  # (a sentence start, not a key)
            rel = rel[:1].upper() + rel[1:]
        return " " + lead + rel + r.choice(NEEDLE_TRAILS)

    def question(self, nm):
        while True:
            t = self._question(nm)
            if _phrases_ok(t):
                return t

    def _question(self, nm):
        r = self.rng
        x = r.random()
        if x < 0.4:
            lead, ask = r.choice(FREE_QUESTION_LEADS), r.choice(FREE_ASKS)
            if lead.endswith(", ") and not ask.startswith("{"):
                ask = ask[:1].lower() + ask[1:]
            ans = r.choice(FREE_ANSWERS).replace("{V}", r.choice(VERBS))
            return fill((lead if lead.endswith(("\n", " ")) else (lead or " ")) + ask + ans, N=nm)
        if x < 0.65:
            return fill(r.choice(QUESTIONS), N=nm)
        lead, ask = r.choice(QUESTION_LEADS), r.choice(ASKS)
        if lead.endswith(", ") and not ask.startswith("{"):
            ask = ask[:1].lower() + ask[1:]
        return fill((lead or " ") + ask + r.choice(ANSWER_PREFIXES), N=nm)

    # ---------------------------------------------------------------- samples
    def sample(self, T, easy=0.0):
        """One sample; `easy`: the share of single-fact passkeys whose question ends with the words that
        came right before the key (plain induction: what a small model learns first)."""
        if self.rng.random() < easy:
            return self.passkey_easy(T)
        r = self.rng.random()
        if r < 0.2:
            return self.book(T), [0] * T
        if T >= SPREAD_FROM and r < 0.55:  # long samples: questions all along, as many answers a step as at 2K
            return self.spread(T)
        if r < 0.7:
            return self.passkeys(T)
        if r < 0.9:
            return self.kv_list(T)
        return self.two_hop(T)

    def _assemble(self, T, head, inserts, tail_qas):
        """head tokens, then filler with `inserts` (token lists) at random depths, then the questions and
        answers of tail_qas [(question, answer)] - cut or padded with book text to exactly T tokens."""
        # each answer ends with a full stop or a line break (trained as text, not as the answer): the model
        # learns where a key ends (without it, it ran on past 5-digit keys: keys here have 4-8 digits)
        ends = [self.enc(self.rng.choice([".", "\n", ".\n"])) for _ in tail_qas]
        fixed = len(head) + sum(map(len, inserts)) + sum(len(q) + len(a) for q, a in tail_qas) + sum(map(len, ends))
        body = self.filler(max(0, T - fixed))
        cuts = sorted(self.rng.randrange(0, len(body) + 1) for _ in inserts)
        order = list(range(len(inserts)))
        self.rng.shuffle(order)
        toks, mask, last = list(head), [0] * len(head), 0
        for c, i in zip(cuts, order):
            toks += body[last:c] + inserts[i]
            mask += [0] * (c - last + len(inserts[i]))
            last = c
        toks += body[last:]
        mask += [0] * (len(body) - last)
        for (q, a), end in zip(tail_qas, ends):
            toks += q + a + end
            mask += [0] * len(q) + [1] * len(a) + [0] * len(end)
        return self._fit(toks, mask, T)

    def _fit(self, toks, mask, T):
        """Cut to exactly T tokens, or pad with book text (no answers in it)."""
        if len(toks) < T:
            pad = self.book(T - len(toks))
            toks += pad
            mask += [0] * len(pad)
        return toks[:T], mask[:T]

    def passkeys(self, T):
        """1-6 facts of different names hidden in filler; 1-3 of them asked at the end."""
        r = self.rng
        n = r.choice([1, 1, 2, 3, 4, 6])
        names = self.names(n)
        keys = [self.key() for _ in names]
        inserts = []
        for nm, k in zip(names, keys):
            pre, post = r.choice(SEPARATORS)
            inserts.append(self.enc(pre + self.needle(nm, k) + post))
        asked = r.sample(range(n), r.randint(1, min(3, n)))
        qas = [(self.enc(self.question(names[i])), self.enc(f" {keys[i]}")) for i in asked]
        intro = r.choice(INTROS)
        return self._assemble(T, self.enc(intro) if intro else [], inserts, qas)

    def spread(self, T):
        """Facts hidden all through a long text and questions asked all through it, each about a fact
        stated before it (any distance back): a 32K sample then carries ~T/2000 answers, where one with its
        questions at the end carries 1-3 (its batches hold 2 samples against 32 at 2K)."""
        r = self.rng
        n_q = max(2, T // 2000 + r.randint(-2, 2))
        n_f = max(2, n_q // 2 + r.randint(0, 4))  # some facts asked twice, some never
        names = self.names(n_f)
        keys = [self.key() for _ in names]
        at_f = sorted(r.random() * 0.9 for _ in names)  # where each fact is stated (share of the text)
        facts = []
        for nm, k in zip(names, keys):
            pre, post = r.choice(SEPARATORS)
            facts.append(self.enc(pre + self.needle(nm, k) + post))
        events = [(f, 0, facts[i], None) for i, f in enumerate(at_f)]
        for _ in range(n_q):
            g = at_f[0] + r.random() * (1.0 - at_f[0])
            i = r.choice([i for i, f in enumerate(at_f) if f < g])
            end = self.enc(r.choice([".", "\n", ".\n"]))  # (not trained as the answer: see _assemble)
            events.append((g, 1, self.enc(self.question(names[i])), (self.enc(f" {keys[i]}"), end)))
        intro = r.choice(INTROS)
        head = self.enc(intro) if intro else []
        fixed = len(head) + sum(len(e[2]) + (len(e[3][0]) + len(e[3][1]) if e[3] else 0) for e in events)
        body = self.filler(max(0, T - fixed))
        toks, mask, last = list(head), [0] * len(head), 0
        for frac, _, piece, qa in sorted(events, key=lambda e: (e[0], e[1])):  # (a fact before a question at the same place)
            c = max(last, min(len(body), round(frac * len(body))))
            toks += body[last:c] + piece
            mask += [0] * (c - last + len(piece))
            if qa:
                toks += qa[0] + qa[1]
                mask += [1] * len(qa[0]) + [0] * len(qa[1])
            last = c
        toks += body[last:]
        mask += [0] * (len(body) - last)
        return self._fit(toks, mask, T)

    def passkey_easy(self, T):
        r = self.rng
        nm, k = self.names(1)[0], self.key(r.choice(["digits", "digits", None]))
        lead = r.choice(["The {N} is", "the {N} is", "My {N} is", "{Ncap}:", "The {N} was"])
        needle = fill(" " + lead + " {K}.", N=nm, K=k)
        question = fill(r.choice([" What is the {N}? ", " Question: the {N}? ", "\n", " Remember? "]) + lead, N=nm)
        pre, post = r.choice(SEPARATORS)
        intro = r.choice(INTROS)
        return self._assemble(T, self.enc(intro) if intro else [], [self.enc(pre + needle + post)], [(self.enc(question), self.enc(f" {k}"))])

    def kv_list(self, T):
        """A list of owner -> key lines (in one block or spread through the text); some owners asked."""
        r = self.rng
        nm = self.names(1)[0]
        owners = r.sample(OWNERS, r.randint(3, 30))
        keys = [self.key("digits" if r.random() < 0.7 else None) for _ in owners]
        line = r.choice(KV_LINES)
        lines = [self.enc(fill(line, N=nm, O=o, K=k)) for o, k in zip(owners, keys)]
        asked = r.sample(range(len(owners)), r.randint(1, min(4, len(owners))))
        qas = [(self.enc(fill(r.choice(KV_QUESTIONS), N=nm, O=owners[i])), self.enc(f" {keys[i]}")) for i in asked]
        if r.random() < 0.5:  # one block
            block = self.enc(fill(r.choice(KV_HEADERS), N=nm)) + [t for l in lines for t in l] + self.enc("\n")
            return self._assemble(T, [], [block], qas)
        return self._assemble(T, [], lines, qas)

    def two_hop(self, T):
        """A's key is B's; B's key is stated elsewhere: asked for A."""
        r = self.rng
        nm = self.names(1)[0]
        a, b, c = r.sample(OWNERS, 3)
        kb, kc = self.key("digits"), self.key("digits")
        inserts = [self.enc(fill(r.choice(HOP_LINK), N=nm, A=a, B=b)), self.enc(f" The {nm} of {b} is {kb}."),
                   self.enc(f" The {nm} of {c} is {kc}.")]
        qas = [(self.enc(fill(r.choice(KV_QUESTIONS), N=nm, O=a)), self.enc(f" {kb}"))]
        return self._assemble(T, [], inserts, qas)


def read_books(corpus):
    """The training books of a corpus folder: every .txt except the held-out evaluation books."""
    names = sorted(f for f in os.listdir(corpus) if f.endswith(".txt") and f not in HELDOUT_BOOKS)
    return {f: _read(os.path.join(corpus, f)).replace("\r\n", "\n") for f in names}


def word_list(texts, n=2000):
    """Frequent plain words of the training books (keys that are words)."""
    counts = {}
    for t in texts:
        for w in re.findall(r"\b[a-z]{4,9}\b", t[:2_000_000]):
            counts[w] = counts.get(w, 0) + 1
    return [w for w, _ in sorted(counts.items(), key=lambda x: -x[1])[:n] if _phrases_ok(w)]
