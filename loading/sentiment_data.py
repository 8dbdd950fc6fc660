"""
Human-rated sentences for the sentiment task: the ground truth of VADER (Hutto and Gilbert, "VADER: A
Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014; MIT licence).

Each text was rated by 20 or more people on -4 (most negative) ... +4 (most positive); a domain's file holds
one text a line, `id <TAB> mean rating <TAB> text`, UTF-8 with CRLF line ends:

    movies  movieReviewSnippets_GroundTruth.txt   10,605 sentences from movie reviews
    tweets  tweets_GroundTruth.txt                  4,200 tweets
    amazon  amazonReviewSnippets_GroundTruth.txt    3,708 sentences from product reviews
    nyt     nytEditorialSnippets_GroundTruth.txt    5,190 sentences from New York Times editorials

Only the source distribution of vaderSentiment 3.3.2 carries them (additional_resources/hutto_ICWSM_2014.tar.gz,
inside the sdist's own tar.gz); the texts are read from the downloaded file as it is, never unpacked to disk, and
the package is never installed nor imported. The first use fetches it into data/ (loading/registry.py's folder,
ASCALE_DATA), saying so in one line on stderr, with what one can also run by hand:

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d data/

A folder given explicitly (train.py --data DIR) is read as it is: it must hold the file.
"""

import html
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from loading import registry
from running.errors import UserError

SDIST = "vaderSentiment-3.3.2.tar.gz"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {"movies": "movieReviewSnippets", "tweets": "tweets", "amazon": "amazonReviewSnippets",
           "nyt": "nytEditorialSnippets"}
DOWNLOAD = "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d data/"
DATA = registry.DATA   # the default folder: data/ at the project root (or ASCALE_DATA)


@dataclass
class Rated:
    """One text and its mean rating, -4 ... +4."""
    id: str
    rating: float
    text: str


def archive(folder: Path | None = None) -> Path:
    """The downloaded sdist in `folder`; by default data/ at the project root, where the first use fetches it
    with pip (UserError with the command to run by hand where that fails). An explicit folder must hold it
    (UserError with the download command where it does not)."""
    if folder is None:
        return registry.registry_archive("vaderSentiment", "3.3.2", SDIST, data=DATA, note="sentiment: fetching"
                                         " the human-rated texts of vaderSentiment 3.3.2's source archive (about"
                                         f" 2.4 MB) from PyPI, once: {DOWNLOAD.replace('data/', str(DATA))}")
    folder = Path(folder)
    path = folder / SDIST
    if not path.is_file():
        command = DOWNLOAD if folder == DATA else DOWNLOAD.replace("-d data/", f"-d {folder}")
        raise UserError(f"the sentiment data {path} is absent; download it with: {command}")
    return path


def parse(text: str, name: str) -> list[Rated]:
    """The lines of one ground-truth file -> Rated texts. HTML entities of the tweets (&amp;) are decoded."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):   # CRLF or LF
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            rows.append(Rated(fields[0], float(fields[1]), html.unescape(fields[2]).strip()))
        except (IndexError, ValueError):
            raise UserError(f"{name}, line {n}: expected 'id <TAB> rating <TAB> text', got {line[:60]!r}") from None
    return rows


def read_domain(domain: str, folder: Path | None = None) -> list[Rated]:
    """All rated texts of one domain (movies, tweets, amazon, nyt), in the file's order."""
    if domain not in DOMAINS:
        raise UserError(f"unknown domain {domain!r}; choose {', '.join(DOMAINS)}")
    path = archive(folder)
    name = f"hutto_ICWSM_2014/{DOMAINS[domain]}_GroundTruth.txt"
    try:
        with tarfile.open(path) as sdist:
            inner = sdist.extractfile(INNER)
            with tarfile.open(fileobj=io.BytesIO(inner.read())) as data:
                raw = data.extractfile(name).read()
    except (KeyError, AttributeError, tarfile.TarError, OSError) as e:
        raise UserError(f"{path} does not hold {name} ({type(e).__name__}); download it again with: {DOWNLOAD}") \
            from None
    try:
        return parse(raw.decode("utf-8"), name)
    except UnicodeDecodeError:
        raise UserError(f"{path}: {name} is not UTF-8 text; download it again with: {DOWNLOAD}") from None


def clear_cases(rows: list[Rated], threshold: float) -> list[Rated]:
    """The texts whose mean rating is at least `threshold` from neutral: the raters agree on their sign."""
    return [r for r in rows if abs(r.rating) >= threshold]
