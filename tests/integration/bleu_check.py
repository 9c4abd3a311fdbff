"""Prints NLTK's corpus_bleu of HYP against REF (one reference per line,
whitespace tokens, default weights, no smoothing) with 10 decimals: the
oracle of test_bleu.sh. Needs Debian's python3-nltk."""
import sys
from nltk.translate.bleu_score import corpus_bleu


def lines(path):
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    parts = text.split("\n")
    if text.endswith("\n"):
        parts.pop()
    return [p.split() for p in parts]


ref, hyp = lines(sys.argv[1]), lines(sys.argv[2])
print("%.10f" % corpus_bleu([[r] for r in ref], hyp))
