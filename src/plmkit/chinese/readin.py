"""READIN (Si et al., ACL 2023): Chinese test sets re-entered by people with a pinyin IME ("keyboard") or by
speech ("asr"), three versions each; models are trained on clean data and scored on every noisy version.

This module reads and writes the release's layout, aligns the noisy versions with the clean examples, and
scores a model with READIN's two numbers: *Average* (the mean over versions of each version's score) and
*Worst* (for each example the minimum over versions, then the mean). Noisy versions of new data come from
:mod:`plmkit.chinese.noise` (:func:`make_noisy_set`, ``plmkit readin noise``).

Layout (one folder per task)::

    afqmc/     test_clean/test.json, test_noisy_{keyboard,asr}_{1,2,3}/test.json   JSONL: sentence1, sentence2, label
    cmrc2018/  test_clean.json, test_noisy_{keyboard,asr}_{1,2,3}.json            SQuAD-style JSON (noisy questions)
    nmt/       test_clean.json, test_noisy_{keyboard,asr}_{1,2,3}.json            JSONL: zh, en, id
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any, Callable, Sequence

from ..errors import ConfigError, MissingAssetError, read_text_utf8

TASKS = ("afqmc", "cmrc2018", "nmt")
NOISE_KINDS = ("keyboard", "asr")
TEXT_FIELDS = {"afqmc": ("sentence1", "sentence2"), "cmrc2018": ("question",), "nmt": ("zh",)}
GOLD_FIELDS = {"afqmc": ("label",), "cmrc2018": ("answers",), "nmt": ("en",)}
_TASK_ALIASES = {"afqmc": "afqmc", "cmrc2018": "cmrc2018", "cmrc": "cmrc2018", "nmt": "nmt", "wmt": "nmt",
                 "wmt2021": "nmt", "wmt21": "nmt", "mt": "nmt"}
_KIND_ALIASES = {"keyboard": "keyboard", "asr": "asr", "speech": "asr"}
_DOWNLOAD = ("download READIN (the Google Drive link in https://github.com/thunlp/READIN's README), unzip it and "
             "pass the folder that holds the task's test_clean files")
_ID_LIKE = re.compile(r"^(id|idx|index|uid|guid|qid|label|labels)$|(_id|_label)$", re.IGNORECASE)


@dataclass
class ReadinSet:
    """A READIN test set: ``clean`` examples and, per noise kind (``keyboard``, ``asr``), its noisy versions,
    each a list aligned with ``clean`` (the same example at the same position)."""

    task: str
    clean: list[dict]
    noisy: dict[str, list[list[dict]]] = field(default_factory=dict)
    root: Path | None = None

    @property
    def text_fields(self) -> tuple[str, ...]:
        return TEXT_FIELDS.get(self.task, ())

    def __len__(self) -> int:
        return len(self.clean)


# ---------------------------------------------------------------- names and paths


def normalize_task(task: str) -> str:
    t = _TASK_ALIASES.get(str(task).lower())
    if t is None:
        raise ConfigError(f"unknown READIN task {task!r}; use one of {', '.join(TASKS)}")
    return t


def normalize_kind(kind: str) -> str:
    """``keyboard`` or ``asr`` (``speech`` is accepted for ``asr``, the release's folder name)."""
    k = _KIND_ALIASES.get(str(kind).lower())
    if k is None:
        raise ConfigError(f"unknown noise kind {kind!r}; use 'keyboard' or 'asr' (alias 'speech')")
    return k


def split_name(kind: str | None = None, version: int | None = None) -> str:
    """``test_clean`` or ``test_noisy_<kind>_<version>``."""
    return "test_clean" if kind is None else f"test_noisy_{normalize_kind(kind)}_{version}"


def split_path(task_root: str | Path, task: str, split: str) -> Path:
    """Where a split lives: ``<split>/test.json`` for AFQMC, ``<split>.json`` for CMRC2018 and NMT."""
    root = Path(task_root)
    if normalize_task(task) == "afqmc":
        d = root / split
        return next((p for p in (d / "test.json", d / "test.jsonl") if p.exists()), d / "test.json")
    return root / f"{split}.json"


def _task_root(root: Path, task: str) -> Path:
    if not root.exists():
        raise MissingAssetError("readin", _DOWNLOAD, f"{root} does not exist")
    if split_path(root, task, "test_clean").exists():
        return root
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if _TASK_ALIASES.get(sub.name.lower()) == task and split_path(sub, task, "test_clean").exists():
                return sub
    expected = split_path(root, task, "test_clean").relative_to(root)
    raise MissingAssetError("readin", _DOWNLOAD, f"no {task} clean test set under {root}: expected {expected} "
                                                 f"there or in a '{task}' subfolder")


# ---------------------------------------------------------------- reading


def _read_jsonl(path: Path) -> list[dict]:
    text = read_text_utf8(path, "input")
    if text.lstrip().startswith("["):  # a JSON array is accepted too
        rows = _parse_json(path, text)
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise ConfigError(f"{path} line {n} is not valid JSON ({e}); READIN files hold one JSON "
                                      "object per line") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ConfigError(f"{path}: example {bad} is not a JSON object")
    return rows


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None


def squad_to_rows(obj: Any, where: str = "input") -> list[dict]:
    """Flatten SQuAD/CMRC2018-style ``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}`` into rows
    ``{"id", "title", "context", "question", "answers": [{"text", "answer_start"}]}``."""
    if isinstance(obj, list) and all(isinstance(r, dict) and "question" in r for r in obj):
        return obj  # already flat
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise ConfigError(f"{where} is not SQuAD-style JSON (expected a top-level 'data' list of articles)")
    rows = []
    for article in obj["data"]:
        for para in article.get("paragraphs", ()):
            for qa in para.get("qas", ()):
                rows.append({"id": qa.get("id"), "title": article.get("title", ""), "context": para.get("context", ""),
                             "question": qa.get("question", ""), "answers": qa.get("answers", [])})
    return rows


def rows_to_squad(rows: Sequence[dict]) -> dict:
    """Inverse of :func:`squad_to_rows`: consecutive rows sharing a context become one paragraph."""
    data: list[dict] = []
    for r in rows:
        para = data[-1]["paragraphs"][-1] if data else None
        if para is None or para["context"] != r.get("context", "") or data[-1]["title"] != r.get("title", ""):
            para = {"context": r.get("context", ""), "qas": []}
            data.append({"title": r.get("title", ""), "paragraphs": [para]})
        para["qas"].append({"id": r.get("id"), "question": r.get("question", ""), "answers": r.get("answers", [])})
    return {"version": "readin", "data": data}


def read_split(path: str | Path, task: str) -> list[dict]:
    """The examples of one split file (JSONL for AFQMC/NMT, SQuAD-style JSON for CMRC2018)."""
    path = Path(path)
    if normalize_task(task) == "cmrc2018":
        return squad_to_rows(_parse_json(path, read_text_utf8(path, "input")), str(path))
    return _read_jsonl(path)


def load_readin(root: str | Path, task: str, kinds: Sequence[str] = NOISE_KINDS,
                versions: int | None = 3) -> ReadinSet:
    """Load a READIN task (``afqmc``, ``cmrc2018``, ``nmt``) from the release's layout.

    ``root`` is the task folder or a folder holding it; ``kinds``: noise kinds to load; ``versions``: how many
    versions each kind must have (None: as many consecutive ones as there are, at least one). Noisy examples
    are matched to clean ones by ``id`` when every example has one, else by position, and their gold fields
    (label / answers / en) must agree with the clean ones."""
    task = normalize_task(task)
    root = _task_root(Path(root), task)
    clean = read_split(split_path(root, task, "test_clean"), task)
    paths, missing = {}, []
    for kind in dict.fromkeys(normalize_kind(k) for k in kinds):
        paths[kind], lacking = _version_paths(root, task, kind, versions)
        missing += lacking
    if missing:
        names = ", ".join(p.relative_to(root).as_posix() for p in missing)
        raise MissingAssetError("readin", _DOWNLOAD, f"{root} lacks {names}; load fewer with kinds=... or "
                                                     "versions=None if only some noisy versions exist")
    noisy = {kind: [_align(task, clean, read_split(p, task), p.relative_to(root).as_posix()) for p in ps]
             for kind, ps in paths.items()}
    return ReadinSet(task, clean, noisy, root)


def _version_paths(root: Path, task: str, kind: str, versions: int | None) -> tuple[list[Path], list[Path]]:
    """The files of a kind's versions, and those of them that are missing."""
    if versions is not None and versions < 1:
        raise ConfigError(f"versions must be at least 1 (or None), not {versions}")
    if versions is None:
        paths: list[Path] = []
        while (p := split_path(root, task, split_name(kind, len(paths) + 1))).exists():
            paths.append(p)
        return paths, [] if paths else [split_path(root, task, split_name(kind, 1))]
    paths = [split_path(root, task, split_name(kind, k)) for k in range(1, versions + 1)]
    return paths, [p for p in paths if not p.exists()]


def _align(task: str, clean: list[dict], rows: list[dict], where: str) -> list[dict]:
    """``rows`` reordered to match ``clean`` (by id, else by position), after checking the gold fields."""
    if _has_ids(clean) and _has_ids(rows):
        by_id = {str(r["id"]): r for r in rows}
        clean_ids = [str(r["id"]) for r in clean]
        missing = [i for i in clean_ids if i not in by_id]
        extra = sorted(set(by_id) - set(clean_ids))
        if missing or extra or len(by_id) != len(rows):
            raise ConfigError(f"{where} does not match test_clean: {_id_problems(missing, extra, rows, by_id)}; "
                              "re-download or regenerate that file")
        rows = [by_id[i] for i in clean_ids]
    elif len(rows) != len(clean):
        raise ConfigError(f"{where} has {len(rows)} examples but test_clean has {len(clean)}, and they have no "
                          "ids to match them by; the files belong to different versions of the data")
    for n, (c, r) in enumerate(zip(clean, rows)):
        for f in GOLD_FIELDS[task]:
            if f in c and c[f] != r.get(f):
                ex = f"example {n}" + (f" (id {c['id']})" if "id" in c else "")
                raise ConfigError(f"{where} is misaligned with test_clean: {ex} has {f}={c[f]!r} there but "
                                  f"{r.get(f)!r} here; the noisy file must list the same examples as the clean one")
    return rows


def _has_ids(rows: list[dict]) -> bool:
    ids = [r.get("id") for r in rows]
    return bool(rows) and all(i is not None for i in ids) and len(set(map(str, ids))) == len(ids)


def _id_problems(missing: list, extra: list, rows: list, by_id: dict) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} clean example id(s) missing (e.g. {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} id(s) not in test_clean (e.g. {', '.join(extra[:3])})")
    if len(by_id) != len(rows):
        parts.append("duplicate ids")
    return "; ".join(parts)


# ---------------------------------------------------------------- writing


def write_readin(out_dir: str | Path, clean_rows: Sequence[dict],
                 noisy_rows_by_kind: dict[str, Sequence[Sequence[dict]]], task: str = "afqmc") -> Path:
    """Write ``clean_rows`` and their noisy versions (``{"keyboard"|"asr"|"speech": [version 1 rows, ...]}``)
    in the release's layout, each file atomically; :func:`load_readin` reads the folder back."""
    task, out = normalize_task(task), Path(out_dir)
    splits = {"test_clean": list(clean_rows)}
    for kind, versions in noisy_rows_by_kind.items():
        for k, rows in enumerate(versions, 1):
            if len(rows) != len(clean_rows):
                raise ConfigError(f"{kind} version {k} has {len(rows)} examples but there are {len(clean_rows)} "
                                  "clean ones; every noisy version must list the same examples")
            splits[split_name(kind, k)] = list(rows)
    for split, rows in splits.items():
        _write_split(out / split / "test.json" if task == "afqmc" else out / f"{split}.json", rows, task)
    return out


def _write_split(path: Path, rows: list[dict], task: str) -> None:
    from .._io import write_text

    if task == "cmrc2018":
        write_text(path, json.dumps(rows_to_squad(rows), ensure_ascii=False, indent=1) + "\n")
    else:
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ---------------------------------------------------------------- metrics


def average_worst(clean_scores: Sequence[float], noisy_scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """READIN's numbers from per-example scores (accuracy 0/1, EM, F1, sentence BLEU ...).

    ``noisy_scores`` is versions x examples. Returns ``{"clean", "average", "worst"}``: the clean mean, the
    mean over versions of each version's mean, and the mean over examples of the minimum over versions."""
    n = len(clean_scores)
    if n == 0:
        raise ConfigError("average_worst needs at least one example")
    if not noisy_scores:
        raise ConfigError("average_worst needs at least one noisy version")
    bad = [k for k, v in enumerate(noisy_scores, 1) if len(v) != n]
    if bad:
        raise ConfigError(f"noisy version(s) {bad} do not have one score per clean example ({n})")
    return {"clean": fmean(map(float, clean_scores)),
            "average": fmean(fmean(map(float, v)) for v in noisy_scores),
            "worst": fmean(min(float(v[i]) for v in noisy_scores) for i in range(n))}


def evaluate_readin(predict: Callable[[list[dict]], Sequence[Any]], readin_set: ReadinSet,
                    score: Callable[[Any, dict], float]) -> dict[str, Any]:
    """Score ``predict`` (examples -> predictions, called once per version) on every version of a set.

    ``score(prediction, clean_example)`` gives one example's score; gold fields are read from the clean
    example. Returns ``{"n", "clean", <kind>: {"clean", "average", "worst", "versions": [mean per version]}}``."""
    clean_scores = _scores(predict, readin_set.clean, readin_set.clean, score, "test_clean")
    out: dict[str, Any] = {"n": len(readin_set), "clean": fmean(clean_scores)}
    for kind, versions in readin_set.noisy.items():
        per_version = [_scores(predict, rows, readin_set.clean, score, split_name(kind, k))
                       for k, rows in enumerate(versions, 1)]
        out[kind] = {**average_worst(clean_scores, per_version), "versions": [fmean(v) for v in per_version]}
    return out


def _scores(predict: Callable, rows: list[dict], gold: list[dict], score: Callable, where: str) -> list[float]:
    return [float(score(p, g)) for p, g in zip(_predict(predict, rows, where), gold)]


def _predict(predict: Callable, rows: list[dict], where: str) -> list[Any]:
    preds = list(predict(rows))
    if len(preds) != len(rows):
        raise ConfigError(f"predict returned {len(preds)} predictions for the {len(rows)} examples of {where}")
    return preds


def sentence_bleu(prediction: str, example: dict) -> float:
    """sacrebleu's sentence BLEU (0-100, ``13a`` tokenization) of a translation against the example's ``en``."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(str(prediction), [str(example["en"])]).score)


def corpus_bleu(predictions: Sequence[str], examples: Sequence[dict]) -> float:
    """sacrebleu's corpus BLEU (0-100) of translations against the examples' ``en`` references."""
    import sacrebleu

    if len(predictions) != len(examples):
        raise ConfigError(f"{len(predictions)} translations for {len(examples)} references")
    return float(sacrebleu.corpus_bleu([str(p) for p in predictions], [[str(e["en"]) for e in examples]]).score)


def evaluate_nmt(translate: Callable[[list[dict]], Sequence[str]], readin_set: ReadinSet) -> dict[str, Any]:
    """READIN's NMT numbers: corpus BLEU beside the sentence-level ones, on every version of a set.

    ``translate`` maps examples (rows with ``zh``) to English strings and is called once per version.
    Per noise kind: ``corpus`` holds corpus BLEU on clean input, per version, their ``average``, and
    ``worst``, the corpus BLEU of each example's worst translation over versions (worst by sentence
    BLEU); ``sentence`` holds :func:`average_worst` of sentence BLEU, as for the other tasks."""
    if readin_set.task != "nmt":
        raise ConfigError(f"evaluate_nmt scores translations; this set is {readin_set.task!r}: use evaluate_readin")
    gold = readin_set.clean
    clean = _predict(translate, gold, "test_clean")
    clean_sent = [sentence_bleu(p, g) for p, g in zip(clean, gold)]
    out: dict[str, Any] = {"n": len(gold), "clean": corpus_bleu(clean, gold)}
    for kind, versions in readin_set.noisy.items():
        preds = [_predict(translate, rows, split_name(kind, k)) for k, rows in enumerate(versions, 1)]
        sent = [[sentence_bleu(p, g) for p, g in zip(v, gold)] for v in preds]
        worst = [preds[min(range(len(preds)), key=lambda k: sent[k][i])][i] for i in range(len(gold))]
        per_version = [corpus_bleu(v, gold) for v in preds]
        out[kind] = {"corpus": {"clean": out["clean"], "versions": per_version, "average": fmean(per_version),
                                "worst": corpus_bleu(worst, gold)},
                     "sentence": average_worst(clean_sent, sent)}
    return out


def label_accuracy(prediction: Any, example: dict) -> float:
    """1.0 if the prediction equals the example's ``label`` (compared as strings: 1 == "1")."""
    return float(str(prediction) == str(example["label"]))


_PUNCT = set(string.punctuation) | set("，。、；：？！“”‘’（）《》【】「」『』—…·～")


def _answer_chars(text: str) -> list[str]:
    return [c for c in str(text).lower() if not c.isspace() and c not in _PUNCT]


def _gold_answers(example: dict) -> list[str]:
    answers = example.get("answers", [])
    return [a["text"] if isinstance(a, dict) else str(a) for a in answers] or [""]


def answer_em(prediction: str, example: dict) -> float:
    """CMRC2018-style exact match: the answer equals a gold answer, ignoring case, spaces and punctuation."""
    p = _answer_chars(prediction)
    return float(any(p == _answer_chars(g) for g in _gold_answers(example)))


def answer_f1(prediction: str, example: dict) -> float:
    """CMRC2018-style character F1 against the best gold answer (case, spaces and punctuation ignored)."""
    from collections import Counter

    p = _answer_chars(prediction)
    best = 0.0
    for g in map(_answer_chars, _gold_answers(example)):
        common = sum((Counter(p) & Counter(g)).values())
        if common:
            prec, rec = common / len(p), common / len(g)
            best = max(best, 2 * prec * rec / (prec + rec))
        elif not p and not g:
            best = 1.0
    return best


# ---------------------------------------------------------------- noisy sets from new data


def read_examples(path: str | Path) -> tuple[list[dict], str]:
    """Examples of a JSONL file, a SQuAD-style JSON file or a plain text file (one example per line, as
    ``{"id", "text"}``), with the layout they suit: ``cmrc2018`` for SQuAD, ``nmt`` for zh/en rows, else
    ``afqmc``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    text = read_text_utf8(path, "input")
    head = text.lstrip()
    if head.startswith("{") and '"data"' in text[:4096]:
        try:
            return squad_to_rows(json.loads(text), str(path)), "cmrc2018"
        except (ValueError, ConfigError):
            pass
    first = next((l for l in text.splitlines() if l.strip()), "")
    if _is_json_object(first) or head.startswith("["):
        rows = _read_jsonl(path)
        return rows, "nmt" if rows and all("zh" in r and "en" in r for r in rows) else "afqmc"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [{"id": i, "text": line} for i, line in enumerate(lines)], "afqmc"


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def default_fields(rows: Sequence[dict]) -> list[str]:
    """String fields of the examples that hold Chinese text, except id- and label-like ones (for SQuAD rows:
    the question). An NMT row's English side is left alone."""
    from .codes import is_han

    if rows and {"question", "context"} <= set(rows[0]):
        return ["question"]
    names = dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, str) and not _ID_LIKE.search(k))
    return [k for k in names if any(isinstance(r.get(k), str) and any(is_han(c) for c in r[k]) for r in rows)]


def _remove_stale_versions(out: Path, task: str, kind: str, versions: int) -> list[str]:
    """Delete ``kind``'s noisy splits numbered above ``versions`` in ``out`` (left by an earlier run with more
    versions, they would be read as versions of this set); returns their names."""
    import shutil

    prefix = split_name(kind, 1).rsplit("_", 1)[0]  # test_noisy_<kind>
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)(\.json)?$")
    removed = []
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        m = pattern.match(p.name)
        if m and int(m.group(1)) > versions and (p.is_dir() == (task == "afqmc")):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p.name)
    return removed


def make_noisy_set(input_path: str | Path, out_dir: str | Path, kind: str = "keyboard", versions: int = 3,
                   rate: float | None = None, seed: int = 0, fields: Sequence[str] | None = None,
                   task: str | None = None) -> dict[str, Any]:
    """Noisy versions of the examples in ``input_path`` written in READIN's layout under ``out_dir``, with
    ``noise_rates.json`` (the measured share of changed characters per version), which is also returned."""
    from .._io import write_json
    from .noise import DEFAULT_RATE

    if versions < 1:
        raise ConfigError(f"versions must be at least 1, not {versions}")
    rows, detected = read_examples(input_path)
    task = normalize_task(task or detected)
    if not rows:
        raise ConfigError(f"{input_path} holds no examples")
    fields = list(fields) if fields else default_fields(rows)
    _check_fields(rows, fields, input_path)
    rate = DEFAULT_RATE if rate is None else rate
    noisy, stats = noisy_rows(rows, fields, kind, versions, rate, seed)
    write_readin(out_dir, rows, {normalize_kind(kind): noisy}, task=task)
    removed = _remove_stale_versions(Path(out_dir), task, normalize_kind(kind), versions)
    summary = {"kind": "speech" if normalize_kind(kind) == "asr" else "keyboard", "rate": rate, "seed": seed,
               "task": task, "fields": fields, "examples": len(rows), "versions": stats, "removed_stale": removed}
    write_json(Path(out_dir) / "noise_rates.json", summary)
    return summary


def noisy_rows(rows: Sequence[dict], fields: Sequence[str], kind: str, versions: int, rate: float,
               seed: int = 0) -> tuple[list[list[dict]], list[dict]]:
    """``versions`` noisy copies of ``rows`` (only ``fields`` corrupted) and, per version, the measured share of
    changed characters and of changed examples."""
    from .noise import NoiseGenerator, noise_rate

    gen = NoiseGenerator(kind=kind, rate=rate, seed=seed)
    folder = normalize_kind(kind)
    clean_texts = [r[f] for r in rows for f in fields]
    noisy, stats = [], []
    for k in range(1, versions + 1):
        version = [{**r, **{f: gen.corrupt(r[f], k) for f in fields}} for r in rows]
        noisy.append(version)
        stats.append({"version": k, "split": split_name(folder, k),
                      "noise_rate": noise_rate(clean_texts, [r[f] for r in version for f in fields]),
                      "field_noise_rates": {f: noise_rate([r[f] for r in rows], [r[f] for r in version])
                                            for f in fields},
                      "changed_examples": sum(any(a[f] != b[f] for f in fields) for a, b in zip(rows, version))})
    return noisy, stats


def _check_fields(rows: list[dict], fields: list[str], where: Any) -> None:
    if not fields:
        raise ConfigError(f"no text fields to noise in {where}; name them with --fields")
    for n, r in enumerate(rows):
        for f in fields:
            if not isinstance(r.get(f), str):
                raise ConfigError(f"example {n} of {where} has no string field {f!r} (fields: {', '.join(r)}); "
                                  "choose the fields to noise with --fields")
