"""How fast SubChar tokenizers are, beside plain SentencePiece on raw characters, in one process.

    python benchmarks/subchar_speed.py [--train 3000] [--texts 1000] [--repeats 3]

Every tokenizer is trained on the same sample of news + reviews (vocab 8000, unigram). On held-out
news, each is timed for spelling alone (character -> code text) and for the whole call
(spelling + SentencePiece + ids), contenders interleaved in every repeat, best repeat kept.
Prints characters per second and the ratio to the raw-character tokenizer; the last line holds the
ratios (``key=value``). Contextual readings are cached per word as text is encoded; every repeat
starts with an empty cache, so the figures include warming it on these texts. The tables the contextual
encoders build from pypinyin's phrase data (the phrases that read a heteronym otherwise than alone, and
those readings in the encoder's style) are made with the encoders, untimed; their build time is printed.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from plmkit.chinese.codes import CONTEXTUAL
from plmkit.chinese.subchar import ALL_ENCODINGS, _ContextReader, _marked_phrases, train_tokenizer
from plmkit.data.chinese import tokenizer_corpus
from plmkit.device import cpu_info
from plmkit.eval.tokenization import count_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=3000, help="training sentences")
    ap.add_argument("--texts", type=int, default=1000, help="held-out news sentences timed")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = tokenizer_corpus(0, args.train, args.texts)
    texts = data["news"]
    chars = sum(len(t) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        toks = {e: train_tokenizer(data["train"], e, f"{tmp}/{e}", vocab_size=8000, progress=False)
                for e in ALL_ENCODINGS}
        _marked_phrases.cache_clear()
        t = time.perf_counter()
        _marked_phrases()  # built once per process, shared by the contextual encoders
        built = {"phrase index": time.perf_counter() - t}
        for e in CONTEXTUAL:
            t = time.perf_counter()
            _ContextReader(e, toks[e].encoder.codes)
            built[e + " reader"] = time.perf_counter() - t
        best = {e: {"spell": float("inf"), "tokenize": float("inf")} for e in toks}
        for _ in range(args.repeats):
            for e, tok in toks.items():
                tok.encoder.clear_cache()  # every repeat starts cold: no reading cached from an earlier one
                t = time.perf_counter()
                tok.encoder.encode_batch(texts)
                best[e]["spell"] = min(best[e]["spell"], time.perf_counter() - t)
                tok.encoder.clear_cache()
                t = time.perf_counter()
                count_tokens(tok, texts)
                best[e]["tokenize"] = min(best[e]["tokenize"], time.perf_counter() - t)
    base = best["char"]
    print("untimed tables, seconds to build: " + ", ".join(f"{k} {v:.2f}" for k, v in built.items()))
    print(f"{len(texts)} held-out news sentences, {chars} characters; best of {args.repeats}")
    print(f"{'encoding':15s} {'spell chars/s':>14s} {'tokenize chars/s':>17s} {'tokenize vs char':>17s}")
    ratios = {e: base["tokenize"] / b["tokenize"] for e, b in best.items()}
    for e, b in best.items():
        print(f"{e:15s} {chars / b['spell']:14.0f} {chars / b['tokenize']:17.0f} {ratios[e]:17.2f}")
    print(f"cpu={cpu_info()['cpu'].replace(' ', '_')} "
          + " ".join(f"{e}_vs_char={r:.2f}" for e, r in ratios.items() if e != "char")
          + f" min_vs_char={min(r for e, r in ratios.items() if e != 'char'):.2f}")


if __name__ == "__main__":
    main()
