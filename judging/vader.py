"""
VADER's own sentiment analyser (Hutto and Gilbert, ICWSM 2014; vaderSentiment 3.3.2, MIT licence), the outside
judge of how positive a generated text is: `SentimentIntensityAnalyzer().polarity_scores(text)["compound"]`, a
score in [-1, 1] (its README: "VADER is smart, handsome, and funny." scores 0.8316).

The analyser is the package's own code and lexicons, read from the source archive the sentiment task already
fetches (loading/sentiment_data.py: data/vaderSentiment-3.3.2.tar.gz), never pip-installed nor imported from
site-packages: vaderSentiment/vaderSentiment.py, vader_lexicon.txt and emoji_utf8_lexicon.txt are copied into a
temporary folder, the module is executed from there under a private name (importlib), and the analyser reads its
lexicons from beside it when it is made; the folder is removed after.
"""

import importlib.util
import tarfile
import tempfile
from pathlib import Path

from loading import sentiment_data
from running.errors import UserError

PACKAGE = "vaderSentiment-3.3.2/vaderSentiment/"
FILES = ("vaderSentiment.py", "vader_lexicon.txt", "emoji_utf8_lexicon.txt")


def analyzer(folder: Path | None = None):
    """A vaderSentiment.SentimentIntensityAnalyzer made from the sdist in `folder` (None: data/, fetched on first
    use). UserError where the archive lacks one of its files."""
    path = sentiment_data.archive(folder)
    with tempfile.TemporaryDirectory(prefix="vader-") as tmp:
        try:
            with tarfile.open(path) as sdist:
                for name in FILES:
                    member = sdist.extractfile(PACKAGE + name)
                    (Path(tmp) / name).write_bytes(member.read())
        except (KeyError, AttributeError, tarfile.TarError, OSError) as e:
            raise UserError(f"{path} does not hold {PACKAGE}{name} ({type(e).__name__}); download it again with:"
                            f" {sentiment_data.DOWNLOAD}") from None
        spec = importlib.util.spec_from_file_location("ascale_vader_3_3_2", Path(tmp) / FILES[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.SentimentIntensityAnalyzer()     # reads the lexicons now, from beside the module


def compound(judge, texts: list[str]) -> list[float]:
    """VADER's compound score of each text, in [-1, 1] (0 for an empty text)."""
    return [float(judge.polarity_scores(t)["compound"]) for t in texts]
