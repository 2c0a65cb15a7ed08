"""How fast SubChar tokenizers are, beside plain SentencePiece on raw characters, in one process.

    python benchmarks/subchar_speed.py [--train 3000] [--texts 1000] [--repeats 3]

Every tokenizer is trained on the same sample of news + reviews (vocab 8000, unigram). On held-out
news, each is timed for spelling alone (character -> code text) and for the whole call
(spelling + SentencePiece + ids), contenders interleaved in every repeat, best repeat kept.
Prints characters per second and the ratio to the raw-character tokenizer; the last line holds the
ratios (``key=value``). Contextual readings are cached per word as text is encoded; every repeat
starts with an empty cache, so the figures include warming it on these texts. The index of pypinyin's
phrases that read a heteronym otherwise than alone is built once per process, with the encoders, untimed.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from plmkit.chinese.subchar import ALL_ENCODINGS, train_tokenizer
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
