"""`amc_data.encoding.analyzer` against scikit-learn's `CountVectorizer` itself, on hostile text."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from amc_data.encoding.analyzer import (
    Analyzer,
    KeywordTokenIds,
    count_document_frequencies,
    document_from_keywords,
    fit_vocabulary,
    load_stop_words,
)
from amc_data.errors import ConfigError, InputError

# Pieces of text where a tokeniser written by hand would most likely part ways with scikit-learn.
HOSTILE = [
    "café",  # composed é (one code point, a letter)
    "cafe\u0301",  # decomposed é: the combining accent is not \w, so the token is "cafe"
    "naïve Ångström",
    "2010",
    "3d",
    "7",  # a single digit: too short to be a token
    "4x4",
    "don't",  # the apostrophe splits: "don" and "t" (too short)
    "rock'n'roll",
    "l’amour",  # typographic apostrophe
    "snake_case",  # "_" is a word character: one token
    "__init__",
    "_a",
    "well-known",  # the hyphen splits
    "e-mail",
    "ΟΔΟΣ",  # Greek capital sigma at word end: lower() gives a final sigma "ς"
    "ΣΟΦΟΣ ΣΑΣ",
    "İstanbul",  # Turkish dotted capital I: lower() gives "i" + combining dot above
    "İ",
    "ǅ",  # titlecase digraph
    "ﬁre",  # ligature fi: one letter, lower() keeps it
    "ﬀ ﬃ",
    "ＷＣ",  # full-width letters: lower() gives full-width lower case
    "Ｆｕｌｌ Ｗｉｄｔｈ",
    "١٢٣",  # Arabic-Indic digits are \w
    "²³",  # superscript digits are \w (isdigit), too
    "½",  # a vulgar fraction is numeric, hence \w
    "😀 👍🏽",  # emoji are not \w
    "a😀b",
    "𝐀𝐁𝐂",  # mathematical bold capitals (non-BMP letters)
    "𐐀𐐁",  # Deseret capitals (non-BMP, they have lower-case forms)
    "zero\u200dwidth",  # zero-width joiner: not \w, splits the word
    "non\u200cjoiner",
    "soft\u00adhyphen",
    "tab\there",
    "new\nline",
    "cr\r\nlf",
    "\u00a0nbsp\u00a0",
    "THE",  # a stop word in capitals is still a stop word (the text is lower-cased first)
    "And Of The",
    "Fire",  # "fire" is in scikit-learn's English list
    "WC",
    "a b c",  # single letters
    "x",
    "",
    " ",
    "young adult",
    "home design",
    "white sink",
    "ß STRASSE",
    "ǰ",  # lower-case letter whose upper-case form is two code points
    "K",  # Kelvin sign: lower() gives ASCII "k"
    "Ⅻ",  # Roman numeral twelve (a letter number)
    "中文 日本語",
    "한국어",
    "ไทย",
    "x\u0300y",  # combining grave accent between letters
]

STOP_SPECS = ["english", "none"]


def _sklearn_analyzer(stop: str):
    """scikit-learn's own analyzer for a stop spec of ours."""
    return CountVectorizer(stop_words=None if stop == "none" else stop).build_analyzer()


@pytest.mark.parametrize("stop", STOP_SPECS)
def test_analyzer_equals_sklearn_on_each_hostile_piece(stop: str) -> None:
    ours = Analyzer(load_stop_words(stop))
    theirs = _sklearn_analyzer(stop)
    for piece in HOSTILE:
        assert ours(piece) == theirs(piece), piece


@pytest.mark.parametrize("stop", STOP_SPECS)
def test_analyzer_equals_sklearn_on_documents_of_hostile_keywords(stop: str) -> None:
    ours = Analyzer(load_stop_words(stop))
    theirs = _sklearn_analyzer(stop)
    document = document_from_keywords(HOSTILE)
    assert ours(document) == theirs(document)
    # The joined document must tokenise as the pieces do, in order: the joining space splits.
    assert ours(document) == [token for piece in HOSTILE for token in ours(piece)]


def test_analyzer_facts_that_the_hostile_pieces_rely_on() -> None:
    """Spot checks, so that a wrong reading of scikit-learn's behaviour fails loudly here too."""
    analyze = Analyzer()
    assert analyze("ΟΔΟΣ") == ["οδος"]
    assert analyze("İstanbul") == ["stanbul"]  # see test_turkish_i_loses_its_first_letter
    assert analyze("cafe\u0301 café") == ["cafe", "café"]
    assert analyze("ＷＣ") == ["ｗｃ"]
    assert analyze("ﬁre Fire FIRE") == ["ﬁre"]  # the ligature is not the stop word "fire"
    assert analyze("don't well-known snake_case") == ["don", "known", "snake_case"]
    assert analyze("red red THE red") == ["red", "red", "red"]
    assert analyze("zero\u200dwidth") == ["zero", "width"]
    assert analyze("") == []


def test_turkish_i_loses_its_first_letter() -> None:
    """Python 3 lower-cases "İ" to "i" + U+0307 (a mark, not \\w): "i" is left a 1-letter token.

    Python 2's `unicode.lower()` mapped "İ" to a plain "i", so the authors would have seen
    "istanbul" where scikit-learn on Python 3 sees "stanbul".
    """
    assert "İstanbul".lower() == "i\u0307stanbul"
    assert Analyzer()("İstanbul") == _sklearn_analyzer("english")("İstanbul") == ["stanbul"]


def test_analyzer_is_frozen_hashable_and_picklable() -> None:
    analyze = Analyzer(frozenset({"red"}))
    with pytest.raises(AttributeError):
        analyze.stop_words = frozenset()  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(analyze)) == analyze
    assert pickle.loads(pickle.dumps(analyze))("red blue") == ["blue"]
    assert hash(analyze) == hash(Analyzer(frozenset({"red"})))
    assert Analyzer(["red"]).stop_words == frozenset({"red"})  # type: ignore[arg-type]
    assert "318 stop words" in repr(Analyzer())
    with pytest.raises(TypeError, match="load_stop_words"):
        Analyzer("english")  # type: ignore[arg-type]


def test_document_from_keywords_joins_with_one_space() -> None:
    assert document_from_keywords(["young adult", "WC", "café"]) == "young adult WC café"
    assert document_from_keywords([]) == ""
    assert document_from_keywords(["", "a"]) == " a"


def _ids_via_the_document(analyze, vocabulary, keywords):
    table = {word: i for i, word in enumerate(vocabulary)}
    return [table.get(t, -1) for t in analyze(document_from_keywords(keywords))]


def test_keyword_token_ids_equal_the_analyzer_on_the_joined_document() -> None:
    analyze = Analyzer()
    vocabulary = ["blue", "red", "sink", "οδος", "οδοσ"]
    ids = KeywordTokenIds(analyze, vocabulary)
    for keywords in [HOSTILE, ["Red the SINK", "red ΟΔΟΣ", "blue sink"], [], [""], ["ΣΑΣ.", "Σ"]]:
        assert ids.document_ids(keywords) == _ids_via_the_document(analyze, vocabulary, keywords)
    assert ids.document_ids(["Red the SINK", "red", "blue sink"]) == [1, 2, 1, 0, 2]
    assert ids["Red the SINK"] == (1, 2)  # cached per keyword


def test_keyword_token_ids_stop_caching_at_their_bound() -> None:
    ids = KeywordTokenIds(Analyzer(), ["red"], max_keywords=2)
    assert ids.document_ids(["red", "a red", "red red", "x"]) == [0, 0, 0, 0]
    assert len(ids) == 2
    # Long keywords are worked out each time, never cached: unique huge ones cost no memory.
    ids = KeywordTokenIds(Analyzer(), ["red"])
    long = "red " + "x" * 500
    assert ids.document_ids([long, long]) == [0, -1, 0, -1]
    assert long not in ids


def test_token_set_and_document_frequencies() -> None:
    analyze = Analyzer()
    assert analyze.token_set("Red red THE sink") == {"red", "sink"}
    counter = count_document_frequencies(analyze, ["red red sink", "Red", "the"])
    assert counter == {"red": 2, "sink": 1}
    # Counting goes on in a counter passed back in.
    assert count_document_frequencies(analyze, ["sink"], counter) is counter
    assert counter == {"red": 2, "sink": 2}


# --- vocabulary fitting -----------------------------------------------------------------------


def _sklearn_fit(documents: list[str], min_df: int, stop: str) -> dict[str, int] | str:
    """scikit-learn's vocabulary, or the kind of error it raised."""
    vectorizer = CountVectorizer(min_df=min_df, stop_words=None if stop == "none" else stop)
    try:
        return {word: int(i) for word, i in vectorizer.fit(documents).vocabulary_.items()}
    except ValueError as exc:
        return _error_kind(str(exc))


def _our_fit(documents: list[str], min_df: int, stop: str) -> dict[str, int] | str:
    analyze = Analyzer(load_stop_words(stop))
    try:
        words = fit_vocabulary(
            count_document_frequencies(analyze, documents), len(documents), min_df
        )
    except InputError as exc:
        return _error_kind(str(exc))
    return {word: i for i, word in enumerate(words)}


def _error_kind(message: str) -> str:
    for phrase in ("empty vocabulary", "max_df corresponds to < documents than min_df"):
        if phrase in message:
            return phrase
    if "no terms remain" in message.lower():
        return "no terms remain"
    raise AssertionError(f"an error nobody expected: {message}")


@pytest.mark.parametrize("stop", STOP_SPECS)
@pytest.mark.parametrize("min_df", [1, 2, 3, 6])
def test_fit_vocabulary_equals_sklearn_on_hostile_corpus(min_df: int, stop: str) -> None:
    documents = [document_from_keywords(HOSTILE[i::3]) for i in range(3)] * 6 + HOSTILE
    expected = _sklearn_fit(documents, min_df, stop)
    assert isinstance(expected, dict) and expected  # a real comparison, not two errors
    assert _our_fit(documents, min_df, stop) == expected


def test_fit_vocabulary_sorts_by_code_point_and_cuts_at_min_df() -> None:
    frequencies = {"zebra": 3, "Zebra": 3, "apple": 2, "éclair": 5, "eclair": 1, "ｗｃ": 4}
    assert fit_vocabulary(frequencies, 5, 2) == ["Zebra", "apple", "zebra", "éclair", "ｗｃ"]
    assert fit_vocabulary(frequencies, 5, 4) == ["éclair", "ｗｃ"]
    assert fit_vocabulary(frequencies, 5, 1) == sorted(frequencies)


@pytest.mark.parametrize(
    ("documents", "min_df", "kind"),
    [
        ([], 1, "empty vocabulary"),
        (["", "a b"], 1, "empty vocabulary"),
        (["the and of", "THE"], 6, "empty vocabulary"),  # checked before the document count
        (["red", "red"], 3, "max_df corresponds to < documents than min_df"),
        (["red", "blue", "green"], 2, "no terms remain"),
    ],
)
def test_fit_vocabulary_fails_where_sklearn_fails(
    documents: list[str], min_df: int, kind: str
) -> None:
    assert _sklearn_fit(documents, min_df, "english") == kind
    assert _our_fit(documents, min_df, "english") == kind


def test_fit_vocabulary_messages_say_what_to_do() -> None:
    with pytest.raises(InputError, match=r"fewer than min_df=3.*Lower min_df"):
        fit_vocabulary({"red": 2}, 2, 3)
    with pytest.raises(InputError, match=r"most frequent occurs in 1.*Lower min_df"):
        fit_vocabulary({"red": 1, "blue": 1}, 3, 2)
    with pytest.raises(InputError, match=r"only stop words"):
        fit_vocabulary({}, 4, 2)


@pytest.mark.parametrize("min_df", [-1, 0, 1.0, True, "6", None])
def test_fit_vocabulary_refuses_a_bad_min_df(min_df: object) -> None:
    with pytest.raises(ConfigError, match="min_df"):
        fit_vocabulary({"red": 1}, 1, min_df)  # type: ignore[arg-type]


@pytest.mark.parametrize("df", [0, 3, -1])
def test_fit_vocabulary_refuses_impossible_counts(df: int) -> None:
    with pytest.raises(ValueError, match="document frequency of 'red'"):
        fit_vocabulary({"red": df, "blue": 1}, 2, 1)


# --- stop-word lists ----------------------------------------------------------------------------


def test_load_stop_words_builtin_specs() -> None:
    assert load_stop_words("english") == ENGLISH_STOP_WORDS
    assert len(ENGLISH_STOP_WORDS) == 318
    assert load_stop_words("none") == frozenset()


def test_the_copied_english_list_is_scikit_learns() -> None:
    """amc-data carries its own copy of the list; it must stay scikit-learn's, word for word."""
    from amc_data.encoding.stop_words import ENGLISH_STOP_WORDS as copied

    assert copied == ENGLISH_STOP_WORDS
    assert Analyzer().stop_words is copied  # the default analyzer needs no scikit-learn


def test_load_stop_words_from_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "stop.txt"
    lines = [
        "\ufeffred",
        "# a comment",
        "",
        "  blue  ",
        "Green",
        "two words",
        "red",
        "   # indented",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="amc_data.encoding.analyzer"):
        words = load_stop_words(path)
    assert words == {"red", "blue", "Green", "two words"}
    # Entries kept as written can never match, as in scikit-learn; the log says which.
    assert "'Green'" in caplog.text and "'two words'" in caplog.text and "'red'" not in caplog.text
    # A string path works as well as a Path, and the result behaves as CountVectorizer does.
    assert load_stop_words(str(path)) == words
    with pytest.warns(UserWarning, match="inconsistent"):  # scikit-learn warns about them, too
        theirs = CountVectorizer(stop_words=sorted(words)).build_analyzer()
    document = "Red GREEN green blue two words Blue"
    assert Analyzer(words)(document) == theirs(document) == ["green", "green", "two", "words"]


def test_a_path_named_english_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "english").write_text("red\n", encoding="utf-8")
    assert load_stop_words(tmp_path / "english") == {"red"}


def test_load_stop_words_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as caught:
        load_stop_words(missing)
    message = str(caught.value)
    assert str(missing) in message and "'english'" in message and "'none'" in message


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_load_stop_words_unreadable_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "stop"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError, match="could not be read") as caught:
        load_stop_words(path)
    assert str(path) in str(caught.value)


# --- properties -------------------------------------------------------------------------------

_pieces = st.sampled_from(HOSTILE + sorted(ENGLISH_STOP_WORDS)[:40])
_separators = st.sampled_from([" ", "", "\t", "\n", "-", "'", "_", "\u200d", "😀", ".", "  "])
_hostile_text = st.lists(st.tuples(_pieces, _separators), max_size=12).map(
    lambda pairs: "".join(piece + sep for piece, sep in pairs)
)
_any_text = st.one_of(st.text(max_size=60), _hostile_text, st.text(st.characters(), max_size=8))


@settings(max_examples=300, deadline=None)
@given(
    keywords=st.lists(_any_text, max_size=8),
    vocabulary=st.lists(st.sampled_from(["red", "οδος", "οδοσ", "café", "stanbul", "ｗｃ", "x1"])),
    stop=st.sampled_from(STOP_SPECS),
)
def test_property_keyword_token_ids_equal_sklearn_on_the_document(keywords, vocabulary, stop):
    """Tokenising keyword by keyword changes nothing: same ids as scikit-learn on the document."""
    words = sorted(set(vocabulary))
    ids = KeywordTokenIds(Analyzer(load_stop_words(stop)), words)
    assert ids.document_ids(keywords) == _ids_via_the_document(
        _sklearn_analyzer(stop), words, keywords
    )


@settings(max_examples=400, deadline=None)
@given(document=_any_text, stop=st.sampled_from(STOP_SPECS))
def test_property_analyzer_equals_sklearn(document: str, stop: str) -> None:
    ours = Analyzer(load_stop_words(stop))
    assert ours(document) == _sklearn_analyzer(stop)(document)
    assert ours.token_set(document) == set(ours(document))


# Few distinct words, so that some reach min_df and some do not.
_small_words = st.sampled_from(
    ["red", "Red", "sink", "the", "ΟΔΟΣ", "café", "cafe\u0301", "ＷＣ", "x"]
)
_document = st.lists(st.one_of(_small_words, _pieces), max_size=6).map(document_from_keywords)


@settings(max_examples=300, deadline=None)
@given(
    documents=st.lists(_document, max_size=10),
    min_df=st.integers(1, 4),
    stop=st.sampled_from(STOP_SPECS),
)
def test_property_fit_vocabulary_equals_sklearn(
    documents: list[str], min_df: int, stop: str
) -> None:
    assert _our_fit(documents, min_df, stop) == _sklearn_fit(documents, min_df, stop)
