"""judging/vader.py: VADER's analyser read from the sentiment task's source archive scores as its package says."""

import sys

import pytest
from conftest import missing

from judging import vader
from loading import sentiment_data
from running.errors import UserError


@pytest.fixture(scope="module")
def judge():
    try:
        sentiment_data.archive()          # data/, fetched once as the sentiment task does
    except UserError as e:
        missing(str(e))
    return vader.analyzer()


def test_the_readme_sentences_score_as_vaders_own_documentation_says(judge):
    # vaderSentiment 3.3.2's README.rst, "Demo, including example of non-English text translations"
    assert judge.polarity_scores("VADER is smart, handsome, and funny.") == \
        {"neg": 0.0, "neu": 0.254, "pos": 0.746, "compound": 0.8316}
    assert judge.polarity_scores("VADER is not smart, handsome, nor funny.")["compound"] == -0.7424
    assert vader.compound(judge, ["The book was kind of good.", ""]) == [0.3832, 0.0]


def test_the_package_is_read_from_the_archive_not_imported():
    assert not any(name.split(".")[0] == "vaderSentiment" for name in sys.modules)


def test_an_archive_without_the_analyser_is_one_line(tmp_path):
    import tarfile
    with tarfile.open(tmp_path / "vaderSentiment-3.3.2.tar.gz", "w:gz"):
        pass
    with pytest.raises(UserError, match="does not hold vaderSentiment-3.3.2/vaderSentiment/vaderSentiment.py"):
        vader.analyzer(tmp_path)
