"""nac_tf.search.html_report: the report's structure (parsed with html.parser, every image
checked as a PNG without a PNG library and decoded with Pillow), its self-containment,
escaping, atomic writing and bad inputs; and the page rendered in headless Chromium, where
every thumbnail must decode and the result cells must all be there."""
import base64
import binascii
import html.parser
import io
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nac_tf.search.html_report import (MAX_EMBEDDED_SIDE, THUMBNAIL_CSS_PX, ReportQuery,
                                       ReportResult, write_search_report)

DATA_PNG = "data:image/png;base64,"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NUM_QUERIES, K = 3, 4
HOSTILE = '<script>alert("x")</script> & é'


def png_shape(data):
    """(height, width, channels) of the PNG file `data`, checked chunk by chunk without a PNG
    library: the signature, IHDR first, every chunk's CRC-32, IEND last and nothing after
    it, and the inflated image data's size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert binascii.crc32(kind + body) == crc, f"bad CRC in {kind}"
        chunks.append((kind, body))
        position += 12 + length
    assert position == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, interlace) == (8, 0) and colour in (0, 2)
    channels = 1 if colour == 0 else 3
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + width * channels)
    return height, width, channels


class _Page(html.parser.HTMLParser):
    """The report's elements: every tag with its attributes, the result cells in order (with
    their text), the query rows' text."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.cells, self.rows = [], [], []
        self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        self.tags.append((tag, attrs, classes))
        if tag == "tr" and "query-row" in classes:
            self.rows.append([])
        if tag == "td" and "result" in classes:
            self._cell = {"attrs": attrs, "classes": classes, "text": ""}
            self.cells.append(self._cell)
            self.rows[-1].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data + " "

    def images(self, css_class):
        return [attrs for tag, attrs, classes in self.tags if tag == "img" and css_class in classes]


def _image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _queries():
    """Q queries of K results: RGB and grey 8 px thumbnails, one result without an image,
    labels with relevance on the first two queries, none on the last; distances and
    relevance as NumPy scalars, as a search returns them."""
    queries = []
    for q in range(NUM_QUERIES):
        labelled = q < NUM_QUERIES - 1
        results = [ReportResult(
            id=100 * q + j, distance=np.int32(j + q), image=None if (q, j) == (1, 2) else _image(
                (8, 8) if j % 2 else (8, 8, 3), seed=10 * q + j),
            label=str(j % 3) if labelled else None,
            relevant=np.bool_(j % 3 == q) if labelled else None,
            path=f"/photos/q{q}/item {j}.png" if q == 0 else None) for j in range(K)]
        queries.append(ReportQuery(
            name=HOSTILE if q == 2 else f"query {q}", image=_image((8, 8, 3), seed=q),
            results=results, label=str(q) if labelled else None,
            average_precision=0.25 * (q + 1) if labelled else None))
    return queries


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(path, text, queries) of a report of _queries()."""
    queries = _queries()
    path = write_search_report(tmp_path_factory.mktemp("report") / "sub" / "report.html",
                               queries, title=f"Search {HOSTILE}",
                               details={"index": "flat", "k": K, "model <fp>": "ab&cd"})
    with open(path, encoding="ascii") as f:  # plain ASCII: any encoding reads it
        return path, f.read(), queries


def test_report_holds_every_query_and_result_in_rank_order(report):
    path, text, queries = report
    assert isinstance(path, str) and path.endswith(os.path.join("sub", "report.html"))
    page = _Page(text)
    assert len(page.rows) == NUM_QUERIES and all(len(row) == K for row in page.rows)
    assert len(page.cells) == NUM_QUERIES * K
    assert len(page.images("query")) == NUM_QUERIES
    assert len(page.images("thumbnail")) == NUM_QUERIES * K - 1
    for query, row in zip(queries, page.rows):
        for rank, (result, cell) in enumerate(zip(query.results, row), 1):
            attrs, classes = cell["attrs"], cell["classes"]
            assert (attrs["data-id"], attrs["data-distance"], attrs["data-rank"]) == (
                str(result.id), str(result.distance), str(rank))
            assert f"distance {result.distance}" in cell["text"]
            assert f"#{rank}" in cell["text"] and f"id {result.id}" in cell["text"]
            if result.relevant is None:
                assert "data-relevant" not in attrs and "relevant" not in cell["text"]
                assert "label" not in cell["text"]
            else:
                # Marked by a class (the border colour) and by text, not by colour alone.
                expected = "relevant" if result.relevant else "not-relevant"
                assert attrs["data-relevant"] == str(result.relevant).lower()
                assert expected in classes
                assert ("\u2713 relevant" if result.relevant else "\u2717 not relevant") in (
                    cell["text"])
                assert f"label {result.label}" in cell["text"]
            if result.path is not None:
                assert os.path.basename(result.path) in cell["text"]
            if result.image is None:
                assert "no image" in cell["text"]
    assert "AP@all 0.250" in text and "AP@all 0.500" in text and "AP@all 0.750" not in text
    assert "1 / 4 relevant" in text  # query 0: results 0 and 3 have label 0


def test_every_image_is_an_embedded_png_of_its_thumbnail(report):
    _, text, queries = report
    page = _Page(text)
    expected = []
    for query in queries:
        expected.append(query.image)
        expected.extend(result.image for result in query.results if result.image is not None)
    images = [attrs for tag, attrs, _ in page.tags if tag == "img"]
    assert len(images) == len(expected)
    for attrs, image in zip(images, expected):
        assert attrs["src"].startswith(DATA_PNG)
        data = base64.b64decode(attrs["src"][len(DATA_PNG):], validate=True)
        assert png_shape(data) == (8, 8, 1 if image.ndim == 2 else 3)
        with Image.open(io.BytesIO(data)) as decoded:
            np.testing.assert_array_equal(np.asarray(decoded), image)
        # 8 px images are scaled up with hard pixel edges.
        assert "pixelated" in attrs["class"].split()


def test_report_is_self_contained_and_escapes_all_text(report):
    _, text, _ = report
    page = _Page(text)
    assert text.isascii()
    assert "://" not in text  # no URL of any scheme (base64 has no ':')
    for tag, attrs, _ in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base")
        for name in ("src", "href", "srcset", "action"):
            assert name not in attrs or attrs[name].startswith(DATA_PNG), (tag, attrs)
    assert "<script>" not in text and "&lt;script&gt;alert(&quot;x&quot;)" in text
    assert "&eacute;" in text or "&#233;" in text
    assert "<th scope=\"row\">model &lt;fp&gt;</th><td>ab&amp;cd</td>" in text
    assert "<title>Search &lt;script&gt;" in text


def test_large_images_are_averaged_down_and_none_gives_a_placeholder(tmp_path):
    side = 3 * MAX_EMBEDDED_SIDE - 1  # factor 3; the last 2 rows and 1 column are dropped
    big = _image((side, 2 * MAX_EMBEDDED_SIDE, 3), seed=7)
    path = write_search_report(tmp_path / "r.html", [ReportQuery(
        "big", big, [ReportResult(1, 0, None), ReportResult(2, 5, big[:, :, 0])])], "t")
    with open(path) as f:
        page = _Page(f.read())
    assert len(page.images("query")) == 1 and len(page.images("thumbnail")) == 1
    assert "no image" in page.cells[0]["text"]
    for attrs, image in zip(page.images("query") + page.images("thumbnail"),
                            (big, big[:, :, 0])):
        data = base64.b64decode(attrs["src"][len(DATA_PNG):])
        with Image.open(io.BytesIO(data)) as decoded:
            shrunk = np.asarray(decoded)
        # Reference: the mean of each 3 x 3 block, rounded half to even.
        rows, cols = side // 3, 2 * MAX_EMBEDDED_SIDE // 3
        reference = np.empty((rows, cols) + image.shape[2:], np.uint8)
        for i in range(rows):
            for j in range(cols):
                block = image[3 * i:3 * i + 3, 3 * j:3 * j + 3].astype(np.float64)
                reference[i, j] = np.round(block.sum(axis=(0, 1)) / 9)
        np.testing.assert_array_equal(shrunk, reference)
        assert max(shrunk.shape[:2]) > THUMBNAIL_CSS_PX  # scaled down: smooth, not pixelated
        assert "pixelated" not in attrs["class"]


def test_report_is_written_atomically_and_bad_input_leaves_the_old_one(tmp_path):
    path = str(tmp_path / "r.html")
    assert write_search_report(path, [], "empty") == path
    with open(path) as f:
        old = f.read()
    assert _Page(old).cells == [] and "<title>empty</title>" in old
    queries = _queries()
    queries[1].results[2].image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"^queries\[1\]\.results\[2\]\.image: .*uint8"):
        write_search_report(path, queries, "t")
    with open(path) as f:
        assert f.read() == old
    assert os.listdir(tmp_path) == ["r.html"]  # no temporary file left
    write_search_report(path, _queries(), "t")
    assert os.listdir(tmp_path) == ["r.html"]
    with open(path) as f:
        assert len(_Page(f.read()).cells) == NUM_QUERIES * K


@pytest.mark.parametrize("queries, details, words", [
    (ReportQuery("q", None, []), None, r"^queries: must be a list"),
    ("q", None, r"^queries: must be a list"),
    ([{"name": "q"}], None, r"^queries\[0\]: must be a ReportQuery; received dict"),
    ([ReportQuery("q", None, [(1, 2)])], None, r"^queries\[0\]\.results\[0\]: must be a "),
    ([ReportQuery("q", None, None)], None, r"^queries\[0\]\.results: must be a list"),
    ([ReportQuery("q", np.zeros((8, 8, 4), np.uint8), [])], None, r"^queries\[0\]\.image: "),
    ([ReportQuery("q", None, [ReportResult(1.5, 2, None)])], None,
     r"^queries\[0\]\.results\[0\]\.id: must be an integer; received 1\.5"),
    ([ReportQuery("q", None, [ReportResult(1, "2", None)])], None,
     r"^queries\[0\]\.results\[0\]\.distance: must be an integer"),
    ([], [("k", 1)], r"^details: must be a dict"),
], ids=["one-query", "text", "dict-query", "tuple-result", "no-results", "rgba", "float-id",
        "text-distance", "pairs"])
def test_bad_inputs_are_refused_naming_the_parameter(tmp_path, queries, details, words):
    with pytest.raises(ValueError, match=words):
        write_search_report(tmp_path / "r.html", queries, "t", details)
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One headless Chromium for the module, driven by selenium through Debian's
    chromedriver (no Selenium Manager, no network); skipped only where one is absent."""
    webdriver = pytest.importorskip("selenium.webdriver")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.path.isfile(binary):
            pytest.skip(f"{binary} is not installed (Debian: apt-get install chromium "
                        "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--window-size=1200,900",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_report_renders_in_chromium_with_every_thumbnail_decoded(report, chromium):
    path, _, _ = report
    chromium.get(pathlib.Path(path).absolute().as_uri())
    page = chromium.execute_script("""
        const images = Array.from(document.images);
        const small = document.querySelector('img.thumbnail.pixelated');
        return {
          title: document.title,
          images: images.map(i => [i.className, i.complete, i.naturalWidth, i.naturalHeight]),
          results: document.querySelectorAll('td.result').length,
          rows: Array.from(document.querySelectorAll('tr.query-row'),
                           r => r.querySelectorAll('td.result').length),
          queries: document.querySelectorAll('img.query').length,
          thumbnails: document.querySelectorAll('img.thumbnail').length,
          shownWidth: small.getBoundingClientRect().width,
          rendering: getComputedStyle(small).imageRendering,
          scripts: document.scripts.length,
        };""")
    assert page["title"] == f'Search {HOSTILE}'
    assert len(page["images"]) == NUM_QUERIES * K - 1 + NUM_QUERIES
    for class_name, complete, width, height in page["images"]:
        assert complete and (width, height) == (8, 8), class_name
    assert page["results"] == NUM_QUERIES * K and page["rows"] == [K] * NUM_QUERIES
    assert page["queries"] == NUM_QUERIES and page["thumbnails"] == NUM_QUERIES * K - 1
    # The 8 px digits are shown at THUMBNAIL_CSS_PX, with hard pixel edges.
    assert page["shownWidth"] == THUMBNAIL_CSS_PX and page["rendering"] == "pixelated"
    assert page["scripts"] == 0
