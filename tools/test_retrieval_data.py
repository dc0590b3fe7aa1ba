"""Tests of tools/retrieval_data.py (run by `npm test` through src/test/retrieval-data.test.ts, or directly:
python3 tools/test_retrieval_data.py). A byte-level encoder stands in for the trained tokenizer."""
import os, sys, tempfile, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import retrieval_data as rd  # noqa: E402

enc = lambda s: list(s.encode("utf-8"))
dec = lambda t: bytes(t).decode("utf-8", errors="replace")
BOOK = enc(("It was a dark and stormy night; the rain fell in torrents, except at occasional intervals. " * 400))


class RetrievalData(unittest.TestCase):
    def samples(self, n, T, seed=1):
        g = rd.Generator(enc, [BOOK], seed)
        return g, [g.sample(T) for _ in range(n)]

    def test_exact_length_and_answers_retrievable(self):
        for T in (600, 3000):
            g, out = self.samples(300, T)
            asked = 0
            for toks, mask in out:
                self.assertEqual(len(toks), T)
                self.assertEqual(len(mask), T)
                i = 0
                while i < T:  # every answer span: its key was written earlier in the sample
                    if mask[i]:
                        j = i
                        while j < T and mask[j]:
                            j += 1
                        key = dec(toks[i:j]).strip()
                        if j < T or i + len(enc(" " + key)) == j:  # (a span cut at T may be partial)
                            self.assertIn(key, dec(toks[:i]), f"answer {key!r} not in the text before it")
                            asked += 1
                        i = j
                    else:
                        i += 1
            self.assertGreater(asked, 200)

    def test_never_writes_a_heldout_phrasing(self):
        g, _ = self.samples(2000, 800, seed=7)
        written = " ".join(g.texts).lower()
        for p in rd.HELDOUT_PHRASES:
            self.assertNotIn(p, written, f"held-out phrase {p!r} produced")
        for t in rd.TEMPLATES["heldout"]:  # nor the evaluation's needles and questions themselves
            self.assertNotIn(t["question"].strip().lower()[:30], written)

    def test_variety(self):
        g, out = self.samples(1500, 800, seed=3)
        written = g.texts
        frames = sum(1 for f in rd.NEEDLES if any(f.split("{")[0] and f.split("{")[0] in w for w in written))
        self.assertGreater(frames, 8, "needle frames used")
        self.assertTrue(any("pass key" in w for w in written))
        composed = sum(1 for n in set(rd.COMPOSED_NAMES) if any(n in w for w in written))
        self.assertGreater(composed, 200, "composed key names used")
        self.assertGreater(len(rd.COMPOSED_NAMES), 900)
        rel = sum(1 for f in rd.RELATIONS if any(f.split("{")[0].strip() and f.split("{")[0].strip() in w for w in written))
        self.assertGreater(rel, 5, "composed relations used")
        self.assertTrue(any(w.strip().isdigit() for w in written))                  # digit keys
        self.assertTrue(any(w.strip() in g.words for w in written))                  # word keys
        self.assertTrue(any(any(c.isupper() for c in w) and any(c.isdigit() for c in w) and len(w.strip()) < 12 for w in written))  # codes
        self.assertTrue(any("\n" in w for w in written))
        self.assertTrue(any(sum(m) == 0 for _, m in out), "plain book samples")

    def test_open_vocabulary(self):
        """Round 2: names from any two book words, facts tied by many verbs and layouts, and every such
        question names what its answer's fact named."""
        words = ["orchard", "compass", "lantern", "meadow"] * 40 + ["harbour", "signal", "vault", "launch", "code"] * 40
        g = rd.Generator(enc, [BOOK], 11, words)
        listed = set(n.lower() for n in rd.KEY_NAMES + rd.COMPOSED_NAMES)
        names = [n for _ in range(3000) for n in g.names(1)]
        free = [n for n in names if n.lower() not in listed]
        self.assertGreater(len(free), 600, "open-vocabulary names")
        self.assertNotIn("harbour signal", names)  # a held-out name, though both words are on the list
        self.assertNotIn("launch code", names)
        needles = [g.needle("orchard compass", "4711") for _ in range(2000)]
        verbs = sum(1 for v in rd.VERBS if any(f" {v} 4711" in n for n in needles))
        self.assertGreater(verbs, 15, "verbs used")
        wraps = sum(1 for a, b in rd.WRAPS if a and any(n.startswith(" " + a) for n in needles))
        self.assertGreater(wraps, 8, "layouts used")
        for _ in range(500):
            nm = g.names(1)[0]
            self.assertIn(nm.lower(), g.question(nm).lower())

    def test_spread_questions_all_along(self):
        """Round 4: a long sample asks all through its text, each question about a fact stated before it."""
        book = enc("It was a dark and stormy night; the rain fell in torrents, except at occasional intervals. " * 4000)
        g, T = rd.Generator(enc, [book], 5), 40000
        for _ in range(20):
            toks, mask = g.spread(T)
            self.assertEqual((len(toks), len(mask)), (T, T))
            spans, i = [], 0
            while i < T:
                if mask[i]:
                    j = i
                    while j < T and mask[j]:
                        j += 1
                    spans.append((i, j))
                    i = j
                else:
                    i += 1
            self.assertGreaterEqual(len(spans), 8, "answers in a 40K sample")
            self.assertLess(spans[0][0], T // 2, "questions before the end")
            for i, j in spans:
                key = dec(toks[i:j]).strip()  # (a question names its fact, never the key)
                self.assertIn(key, dec(toks[:i]), f"answer {key!r} not stated before its question")
        # long samples use it; 2K ones never do (their mix is the one that reached 95-100% at 2K)
        short = [sum(1 for a, b in zip(m, m[1:]) if b and not a) for _, m in (g.sample(3000) for _ in range(300))]
        self.assertLessEqual(max(short), 4)
        long = [sum(1 for a, b in zip(m, m[1:]) if b and not a) for _, m in (g.sample(rd.SPREAD_FROM * 2) for _ in range(60))]
        self.assertGreater(max(long), 4)

    def test_heldout_books_never_read(self):
        with tempfile.TemporaryDirectory() as d:
            for f in ("moby-dick.txt", "pride_and_prejudice.txt", "tinyshakespeare.txt"):
                with open(os.path.join(d, f), "w") as fh:
                    fh.write("text")
            self.assertEqual(list(rd.read_books(d)), ["moby-dick.txt"])

    def test_heldout_templates_parse(self):
        for t in [rd.PAPER] + rd.TEMPLATES["heldout"]:
            self.assertIn("{key}", t["needle"])
            self.assertFalse(t["question"].endswith(" "), "the answer brings its own leading space")


if __name__ == "__main__":
    unittest.main(verbosity=1)
