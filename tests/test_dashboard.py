"""The dashboard page (GET / and /dashboard).

In-process checks of what the page is (self-contained, its security policy,
served without a key), then a real browser: Debian's Chromium driven by
selenium against the local stack with API keys on, training iris from the
page, waiting for the badge, predicting, and saving the screenshots the
README shows (docs/dashboard.png, docs/dashboard-phone.png).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import pickle
import html.parser
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from chalicelib.storage import PIPELINE_ARTIFACT, artifact_key
from tests.conftest import (API_KEYS, HOSTILE_LABELS, SPREADSHEET_CELLS, VISIBLE_TEXT,
                            hostile_rows, hostile_training_csv, two_class_lines)
from tests.reliability import record

REPO = Path(__file__).resolve().parent.parent
PAGE = (REPO / "chalicelib" / "dashboard.html").read_text()
IRIS = REPO / "iris.csv"
DOCS = REPO / "docs"


def _blocks(tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.DOTALL)


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.references: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id":
                self.ids.append(value)
            if name in ("src", "href", "action", "data", "poster", "srcset"):
                self.references.append((tag, value or ""))


@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_the_page_is_served_without_a_key_and_the_api_still_needs_one(keyed, path):
    page = keyed.http.get(path)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.body.decode() == PAGE
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    refused = keyed.http.get("/models")
    assert refused.status_code == 401, refused.body


def test_the_security_policy_allows_exactly_the_inline_script_and_style(keyed):
    policy = dict(part.strip().split(" ", 1)
                  for part in keyed.http.get("/").headers["Content-Security-Policy"].split(";"))

    def digests(tag):
        return {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                for b in _blocks(tag)}

    assert set(policy["script-src"].split()) == digests("script") and len(digests("script")) == 1
    assert set(policy["style-src"].split()) == digests("style") and len(digests("style")) == 1
    assert policy["default-src"] == "'none'"
    # Its own origin, and S3's for the presigned POST of files too large to post.
    assert policy["connect-src"] == "'self' https://*.amazonaws.com"
    assert policy["frame-ancestors"] == "'none'"


def test_uploads_may_go_to_the_emulator_that_aws_endpoint_url_names(monkeypatch):
    from chalicelib import dashboard

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566/")
    dashboard._page.cache_clear()
    try:
        policy = dashboard.response().headers["Content-Security-Policy"]
    finally:
        dashboard._page.cache_clear()
    assert "connect-src 'self' https://*.amazonaws.com http://127.0.0.1:4566;" in policy


def test_the_page_loads_nothing_from_elsewhere():
    parser = _Ids()
    parser.feed(PAGE)
    outside = [(tag, ref) for tag, ref in parser.references
               if ref and not ref.startswith(("data:", "#"))]
    assert outside == [], "the page must work offline: no external files"
    assert "http://" not in PAGE and "https://" not in PAGE
    # The API, at a path relative to the page; and the presigned link the API
    # gives for a model's pickle (fetched to check its SHA-256).
    assert re.findall(r"fetch\(([^,)]*)", PAGE) == ["BASE + path", "artifact.url"]
    assert "@import" not in PAGE and "url(" not in PAGE
    assert "innerHTML" not in PAGE and "insertAdjacentHTML" not in PAGE and "eval(" not in PAGE


def test_every_element_the_script_uses_exists():
    parser = _Ids()
    parser.feed(PAGE)
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids"
    used = set(re.findall(r"""\$\("([\w-]+)"\)""", _blocks("script")[0]))
    assert used and used <= set(parser.ids), sorted(used - set(parser.ids))


# --- In a real browser, against the local stack -------------------------------

BROWSER_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync")
WAIT_SECONDS = 60
# Every status the model list's badges show, in order, as the page redraws it.
SEEN_STATUSES = """
window.seenStatuses = [];
new MutationObserver(() => {
  for (const badge of document.querySelectorAll("#models .badge")) {
    const status = badge.dataset.status;
    if (window.seenStatuses.at(-1) !== status) window.seenStatuses.push(status);
  }
}).observe(document.getElementById("models"), {childList: true, subtree: true});
"""
PHONE = (390, 844)
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # the browser tests' stack


def _browser_or_skip():
    """Chromium and its driver from Debian, selenium from requirements-dev.txt.
    CI (.ci/run) installs them and sets MLAPI_REQUIRE_BROWSER=1, so there a
    missing piece fails the test instead of skipping it."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium (make installs requirements-dev.txt)")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    driver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    for path, package in ((chromium, "chromium"), (driver, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            missing.append(f"Debian's {package} package ({path}; apt-get install {package})")
    if missing:
        message = "the dashboard browser test needs " + " and ".join(missing)
        if os.environ.get("MLAPI_REQUIRE_BROWSER") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (*BROWSER_ARGS, "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = Path(profile) / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        # Several downloads from one page (a model, then a CSV) without asking.
        "profile.default_content_setting_values.automatic_downloads": 1})
    # An explicit driver path: selenium never tries to download one.
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(30)
    session.downloads = downloads
    try:
        yield session
    finally:
        session.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory):
    from tests.stack import running_stack
    with running_stack(tmp_path_factory.mktemp("devstack-dashboard"),
                       env={"REQUIRE_API_KEY": "true", "API_KEYS": ",".join(API_KEYS),
                            "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES)}) as stack:
        yield stack


def _wait(browser, condition, what: str, timeout: float = WAIT_SECONDS):
    from selenium.common.exceptions import (NoSuchElementException,
                                            StaleElementReferenceException, TimeoutException)
    from selenium.webdriver.support.ui import WebDriverWait
    # The page redraws what it shows (the list every 2 s while a model trains),
    # so an element found a moment ago may be gone: look again.
    redrawn = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.1,
                             ignored_exceptions=redrawn).until(lambda b: condition(b))
    except TimeoutException:
        raise AssertionError(f"the page never showed {what} within {timeout} s; "
                             f"console: {browser.get_log('browser')}") from None


def _text(browser, element_id: str) -> str:
    from selenium.webdriver.common.by import By
    return browser.find_element(By.ID, element_id).text


def _table(browser, element_id: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By
    return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
            for row in browser.find_elements(By.CSS_SELECTOR, f"#{element_id} tbody tr")]


def _enter_key(browser, key: str) -> None:
    from selenium.webdriver.common.by import By
    field = browser.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.ID, "key-form").find_element(By.CSS_SELECTOR,
                                                         "button[type=submit]").click()


def _requests_made(browser, condition: str) -> int:
    """How many requests the page has sent whose resource entry `e` meets the
    JavaScript `condition`."""
    return browser.execute_script(
        f"return performance.getEntriesByType('resource').filter(e => {condition}).length")


def _full_page_screenshot(browser, path: Path, width: int, height: int | None = None) -> None:
    browser.set_window_size(width, 900)
    browser.execute_script("window.scrollTo(0, 0)")
    full = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, height or full + 140)  # + the window's own chrome
    time.sleep(0.3)
    path.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(path)), path


@pytest.mark.e2e
def test_train_iris_wait_for_ready_and_predict_in_chromium(browser, keyed_stack, tmp_path):
    from selenium.webdriver.common.by import By

    stack = keyed_stack
    headers = {"X-Api-Key": API_KEYS[1]}
    by_id = lambda element_id: browser.find_element(By.ID, element_id)  # noqa: E731

    # 1. Without a key the page asks for one, in the API's words.
    browser.get(f"{stack.api}/dashboard")
    _wait(browser, lambda b: "Missing API key" in _text(b, "key-message"), "the key request")
    _enter_key(browser, API_KEYS[1])
    _wait(browser, lambda b: b.find_element(By.ID, "models-empty").is_displayed(),
          "the empty model list")
    assert _text(browser, "key-message") == ""

    # 2. A file that is not a training CSV: the API's 415 text, word for word.
    bad = tmp_path / "notes.csv"
    bad.write_text("just,one,row,without,labels?\n")
    refused = stack.http.post(f"{stack.api}/models", data=bad.read_bytes(),
                              headers={**headers, "Content-Type": "text/csv"})
    assert refused.status_code == 415
    by_id("train-file").send_keys(str(bad))
    by_id("train-button").click()
    _wait(browser, lambda b: _text(b, "train-message") == refused.text.strip(), "the 415 text")

    # 3. Train iris from the page, with a 20% holdout; the badge turns ready by
    # itself (the list refreshes while a model trains), and then the page stops
    # asking.
    browser.execute_script(SEEN_STATUSES)
    by_id("train-file").send_keys(str(IRIS))
    by_id("train-holdout").send_keys("0.2")
    by_id("train-button").click()
    _wait(browser, lambda b: _text(b, "train-message").startswith("Training model_"),
          "the new model's id")
    model_id = _text(browser, "train-message").removeprefix("Training ").rstrip(".")
    badge = f'#models li[data-model-id="{model_id}"] .badge'
    _wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, badge)
          .get_attribute("data-status") == "ready", "the ready badge")
    assert by_id("detail-badge").get_attribute("data-status") == "ready"
    assert _text(browser, "detail-id") == model_id
    seen = browser.execute_script("return window.seenStatuses")
    assert seen[0] == "training" and seen[-1] == "ready", seen
    asked = _requests_made(browser, "e.name.includes('/models?')")
    time.sleep(2.5)  # longer than the page's 2 s refresh
    assert _requests_made(browser, "e.name.includes('/models?')") == asked, \
        "the list kept refreshing with none training"

    # 4. The metrics and the heat map are the API's own.
    status = stack.http.get(f"{stack.api}/check_model_status/{model_id}", headers=headers).json()
    confusion = status["metrics"]["confusion_matrix"]
    shown = _table(browser, "confusion")
    assert shown == [[label, *map(str, counts)]
                     for label, counts in zip(confusion["labels"], confusion["matrix"])]
    assert sum(sum(counts) for counts in confusion["matrix"]) == 30
    cells = browser.find_elements(By.CSS_SELECTOR, "#confusion td")
    for index, cell in enumerate(cells):
        row, column = divmod(index, len(confusion["labels"]))
        counts = confusion["matrix"][row]
        assert float(cell.get_attribute("data-share")) == pytest.approx(
            counts[column] / sum(counts), abs=1e-3)
        assert ("diagonal" in cell.get_attribute("class")) == (row == column)
        assert cell.value_of_css_property("background-color").startswith("rgba(")
    accuracy = f"{100 * status['metrics']['accuracy']:.1f}%"
    assert accuracy in _text(browser, "metrics-stats")

    # 5. A typed row, then three CSV rows: the API's labels and probabilities.
    rows = ["6.3,2.9,5.6,1.8", "5.1,3.5,1.4,0.2", "5.9,3.0,4.2,1.5"]
    expected = stack.http.post(f"{stack.api}/models/{model_id}", data="\n".join(rows) + "\n",
                               headers={**headers, "Content-Type": "text/csv"}).json()
    for index, value in enumerate(rows[0].split(",")):
        by_id(f"feature-{index}").send_keys(value)
    by_id("row-button").click()
    _wait(browser, lambda b: b.find_element(By.ID, "results").is_displayed(), "the prediction")
    assert _table(browser, "results-table") == [
        ["1", str(expected["predictions"][0]),
         *(f"{p:.4f}" for p in expected["prediction_probability"][0])]]

    by_id("csv-rows").send_keys("\n".join(rows))
    by_id("csv-button").click()
    _wait(browser, lambda b: len(_table(b, "results-table")) == 3, "three predictions")
    assert [row[1] for row in _table(browser, "results-table")] == \
        [str(label) for label in expected["predictions"]]
    assert _text(browser, "results-note") == "3 rows"
    _full_page_screenshot(browser, DOCS / "dashboard.png", 1280)

    # 6. A row the model cannot take: the API's 415 text, word for word.
    by_id("csv-rows").clear()
    by_id("csv-rows").send_keys("1,2,three,4")
    bad_row = stack.http.post(f"{stack.api}/models/{model_id}", data="1,2,three,4\n",
                              headers={**headers, "Content-Type": "text/csv"})
    assert bad_row.status_code == 415
    by_id("csv-button").click()
    _wait(browser, lambda b: _text(b, "predict-message") == bad_row.text.strip(), "the 415 text")
    assert not by_id("results").is_displayed()

    # 7. The key stays for the tab: a reload lists the model without asking again.
    browser.refresh()
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, badge), "the model after a reload")
    assert _text(browser, "key-message") == ""

    # 8. A phone's width: nothing wider than the screen.
    browser.find_element(By.CSS_SELECTOR, f'#models li[data-model-id="{model_id}"] button').click()
    _wait(browser, lambda b: b.find_element(By.ID, "predict").is_displayed(), "the predict form")
    browser.set_window_size(*PHONE)
    width = browser.execute_script("return [document.documentElement.scrollWidth, "
                                   "document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
    _full_page_screenshot(browser, DOCS / "dashboard-phone.png", PHONE[0], PHONE[1])

    # No script or policy errors; Chromium logs each 4xx the test asked for (401, 415).
    expected_refusal = re.compile(r"Failed to load resource: the server responded with a "
                                  r"status of (401|415) ")
    problems = [entry["message"] for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE" and not expected_refusal.search(entry["message"])]
    assert problems == []


def _log_in(browser, stack) -> None:
    from selenium.webdriver.common.by import By
    browser.set_window_size(1280, 900)
    browser.get(f"{stack.api}/")
    _enter_key(browser, API_KEYS[0])
    _wait(browser, lambda b: _text(b, "key-message") == "" and
          not b.find_element(By.ID, "models-message").text, "the model list")


@pytest.mark.e2e
def test_a_file_too_large_to_post_goes_through_storage_and_50k_rows_predict_in_batches(
        browser, keyed_stack, tmp_path):
    """6.5 MB, more than one request to Lambda holds: the page POSTs the file to
    POST /uploads' presigned S3 form (the bucket's CORS rule lets the page's
    origin), with the progress bar; 50,000 rows go out in 3 batches. A file over
    the upload limit is refused before it is sent."""
    from selenium.webdriver.common.by import By

    from chalicelib import api

    stack = keyed_stack
    headers = {"X-Api-Key": API_KEYS[0]}
    lines = two_class_lines(int(6.5 * 1024 * 1024), seed=11)
    size = sum(map(len, lines))
    big = tmp_path / "big.csv"
    big.write_text("".join(lines))

    _log_in(browser, stack)
    # The page counts a body's bytes in the Lambda event as the API does.
    samples = ['1,"a"\\\n\t\x01\x7fé😀', "5.1,3.5\r\n", "plain"]
    assert browser.execute_script("return arguments[0].map(eventBytes)", samples) == [
        api.event_bytes(sample.encode(), "text/csv") for sample in samples]
    browser.find_element(By.ID, "train-file").send_keys(str(big))
    browser.find_element(By.ID, "train-max-iter").send_keys("200")
    browser.find_element(By.ID, "train-button").click()
    _wait(browser, lambda b: _text(b, "train-message").startswith("Training model_"),
          "the new model's id", timeout=120)
    model_id = _text(browser, "train-message").removeprefix("Training ").rstrip(".")
    _wait(browser, lambda b: b.find_element(By.ID, "detail-badge")
          .get_attribute("data-status") == "ready", "the ready badge", timeout=180)
    status = stack.http.get(f"{stack.api}/check_model_status/{model_id}", headers=headers).json()
    assert status["n_rows"] == len(lines) and status["metrics"]["accuracy"] > 0.9
    uploads = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="uploads/")["Contents"]
    [upload] = [o for o in uploads if o["Size"] == size]  # the file went to storage
    assert stack.s3.get_object_tagging(Bucket=stack.bucket, Key=upload["Key"])["TagSet"] == [
        {"Key": "ml-api-upload", "Value": "claimed"}]

    # 50,000 rows: over the page's 20,000-row batches, so three requests.
    rows = [",".join(line.split(",")[:3]) for line in lines[:50_000]]
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(rows) + "\n")
    predicting = f"e.name.endsWith('/models/{model_id}')"
    before = _requests_made(browser, predicting)
    browser.find_element(By.ID, "csv-file").send_keys(str(csv))
    browser.find_element(By.ID, "csv-button").click()
    _wait(browser, lambda b: _text(b, "results-note") == "first 500 of 50000 rows",
          "the 50,000 predictions", timeout=120)
    sent = _requests_made(browser, predicting) - before
    assert sent == 3, f"{sent} predict requests for 50,000 rows"
    expected = stack.http.post(f"{stack.api}/models/{model_id}", data="\n".join(rows[:500]) + "\n",
                               headers={**headers, "Content-Type": "text/csv"}).json()
    assert [row[1] for row in _table(browser, "results-table")] == expected["predictions"]
    assert browser.find_element(By.ID, "results-save").get_attribute("href").startswith("blob:")

    # Download: the API's presigned link (the message names the scikit-learn
    # version the API reports); then delete, confirmed in the browser's dialog.
    artifact = stack.http.get(f"{stack.api}/models/{model_id}/artifact", headers=headers).json()
    browser.find_element(By.ID, "download-button").click()
    _wait(browser, lambda b: f"scikit-learn {artifact['scikit_learn_version']} pipeline"
          in _text(b, "detail-message"), "the download message")
    stored = stack.s3.get_object(Bucket=stack.bucket,
                                 Key=artifact_key(model_id, PIPELINE_ARTIFACT))["Body"].read()
    _wait(browser, lambda b: [p.read_bytes() for p in b.downloads.glob("*.pkl")] == [stored],
          "the downloaded pickle", timeout=30)
    browser.find_element(By.ID, "delete-button").click()
    dialog = browser.switch_to.alert
    assert model_id in dialog.text
    dialog.accept()
    _wait(browser, lambda b: not b.find_elements(By.CSS_SELECTOR,
                                                  f'#models li[data-model-id="{model_id}"]'),
          "the model gone from the list")
    assert browser.find_element(By.ID, "detail-empty").is_displayed()
    gone = stack.http.get(f"{stack.api}/check_model_status/{model_id}", headers=headers)
    assert gone.status_code == 404

    # Over the upload limit: the page says so and sends nothing to storage.
    huge = tmp_path / "huge.csv"
    huge.write_text("".join(two_class_lines(MAX_UPLOAD_BYTES + 1, seed=12)))
    browser.find_element(By.ID, "train-file").send_keys(str(huge))
    browser.find_element(By.ID, "train-button").click()
    _wait(browser, lambda b: "the service takes uploads of at most 8.0 MB" in
          _text(b, "train-message"), "the upload limit")
    assert stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="uploads/").get(
        "KeyCount", 0) == len(uploads) - 1


def _downloaded(browser, name: str) -> bytes | None:
    """The file's bytes once Chromium has finished saving it, else None."""
    path = browser.downloads / name
    partial = list(browser.downloads.glob(name + "*.crdownload"))
    return path.read_bytes() if path.exists() and not partial else None


@pytest.mark.e2e
def test_hostile_labels_are_text_saved_csv_is_safe_and_downloads_are_checked(
        browser, keyed_stack, tmp_path):
    """A model whose labels are formulas, markup and terminal escapes: the page
    shows them as text with visible escapes, "Save as CSV" escapes the
    formulas (and keeps -1.5 a number), and "Download model" saves the pickle
    only when its SHA-256 is the API's."""
    from selenium.webdriver.common.by import By

    stack = keyed_stack
    headers = {"X-Api-Key": API_KEYS[0]}
    created = stack.http.post(f"{stack.api}/models", data=hostile_training_csv(),
                              headers={**headers, "Content-Type": "text/csv"})
    assert created.status_code == 201, created.text
    model_id = created.json()["model_id"]
    assert stack.wait_for_training(model_id, headers=headers)["status"] == "Ready to Use"

    _log_in(browser, stack)
    # The page's own rules, on the cases ml-api's tests use.
    cells = browser.execute_script("return arguments[0].map(spreadsheetCell)",
                                   [value for value, _ in SPREADSHEET_CELLS])
    assert cells == [cell for _, cell in SPREADSHEET_CELLS]
    shown = browser.execute_script("return arguments[0].map(visible)",
                                   [value for value, _ in VISIBLE_TEXT])
    assert shown == [text for _, text in VISIBLE_TEXT]

    item = f'#models li[data-model-id="{model_id}"] button'
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, item), "the model in the list")
    browser.find_element(By.CSS_SELECTOR, item).click()
    _wait(browser, lambda b: b.find_element(By.ID, "predict").is_displayed(), "the predict form")
    browser.find_element(By.ID, "csv-rows").send_keys(hostile_rows())
    browser.find_element(By.ID, "csv-button").click()
    rows = len(HOSTILE_LABELS)
    _wait(browser, lambda b: len(_table(b, "results-table")) == rows, "the predictions")
    on_screen = [row[1] for row in _table(browser, "results-table")]
    assert on_screen == [browser.execute_script("return visible(arguments[0])", label)
                         for label in HOSTILE_LABELS]
    assert "\\x1b]0;pwned\\x07\\x1b[2Jred" in on_screen and "[/x]" in on_screen
    page_text = browser.find_element(By.TAG_NAME, "body").text
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e]", page_text)

    browser.find_element(By.ID, "results-save").click()
    _wait(browser, lambda b: _downloaded(b, "predictions.csv"), "the saved CSV")
    header, *saved = list(csv.reader(io.StringIO(
        _downloaded(browser, "predictions.csv").decode(), newline="")))
    classes = stack.http.get(f"{stack.api}/check_model_status/{model_id}",
                             headers=headers).json()["classes"]
    assert header == ["label", *(f"p_{name}" for name in classes)]
    assert [row[0] for row in saved] == [
        "'" + HOSTILE_LABELS[0], "'@SUM(1+1)", "'-2+3", "[/x]", "\x1b]0;pwned\x07\x1b[2Jred",
        "\x9b31mc1", "\u202eevil", "-1.5"]
    assert all(0 <= float(p) <= 1 for row in saved for p in row[1:])

    # Download: saved when the bytes match the API's SHA-256 ...
    key = artifact_key(model_id, PIPELINE_ARTIFACT)
    genuine = stack.s3.get_object(Bucket=stack.bucket, Key=key)
    blob, metadata = genuine["Body"].read(), genuine["Metadata"]
    artifact = stack.http.get(f"{stack.api}/models/{model_id}/artifact", headers=headers).json()
    assert artifact["sha256"] == hashlib.sha256(blob).hexdigest()
    browser.find_element(By.ID, "download-button").click()
    _wait(browser, lambda b: _downloaded(b, f"{model_id}.pkl") == blob, "the checked pickle")
    assert f"SHA-256 checked: {artifact['sha256']}" in _text(browser, "detail-message")
    # ... and refused, with nothing saved, when the bucket holds other bytes.
    before = sorted(path.name for path in browser.downloads.iterdir())
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=pickle.dumps({"not": "the model"}),
                        Metadata=metadata)
    try:
        browser.find_element(By.ID, "download-button").click()
        try:
            _wait(browser, lambda b: "Not saved." in _text(b, "detail-message"), "the refusal")
        except AssertionError as error:
            error.add_note(f"the page says: {_text(browser, 'detail-message')!r}")
            raise
        refusal = _text(browser, "detail-message")
        time.sleep(1)  # a download, had one started, would show by now
        after = sorted(path.name for path in browser.downloads.iterdir())
    finally:
        stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=blob, Metadata=metadata)
    assert f"not {artifact['sha256']} as the API says" in refusal
    assert after == before
    record("Client security", "Dashboard: hostile labels, CSV export, tampered download",
           f"in Chromium: predicted {rows} rows of a model whose labels are formulas, markup "
           "and escape sequences, saved them as CSV, downloaded the model, then replaced "
           "model.pkl in the bucket and downloaded again", rows + 2,
           f"labels shown with visible escapes; {sum(c[0].startswith(chr(39)) for c in saved)} "
           "formula cells saved with an apostrophe, -1.5 as a number; the genuine pickle saved "
           "after its SHA-256 check, the replaced one refused with nothing saved")


@pytest.mark.e2e
def test_a_large_prediction_file_goes_as_a_batch(browser, keyed_stack, tmp_path):
    """A file of rows larger than one request: the page uploads it through the
    presigned form, submits a batch, shows its progress, then links to the
    results, which match the API's predictions row for row."""
    import csv as csv_module
    import io

    import requests
    from selenium.webdriver.common.by import By

    stack = keyed_stack
    headers = {"X-Api-Key": API_KEYS[0]}
    created = stack.http.post(f"{stack.api}/models", data=IRIS.read_bytes(),
                              headers={**headers, "Content-Type": "text/csv"}).json()
    model_id = created["model_id"]
    assert stack.wait_for_training(model_id, headers=headers)["status"] == "Ready to Use"
    rows = [",".join(line.split(",")[:3]) for line in two_class_lines(7 * 1024 * 1024, seed=13)]
    rows = [row + ",0.2" for row in rows]  # iris has 4 features
    big = tmp_path / "rows.csv"
    big.write_text("\n".join(rows) + "\n")
    _log_in(browser, stack)
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR,
                                             f'#models li[data-model-id="{model_id}"]'),
          "the model in the list")
    # The list redraws itself: click again until the model's form shows.
    _wait(browser, lambda b: b.find_element(
        By.CSS_SELECTOR, f'#models li[data-model-id="{model_id}"]').click() or
        b.find_element(By.ID, "predict").is_displayed(), "the predict form")
    browser.find_element(By.ID, "csv-file").send_keys(str(big))
    browser.find_element(By.ID, "csv-button").click()
    _wait(browser, lambda b: b.find_element(By.ID, "batch-results").is_displayed(),
          "the batch's results link", timeout=180)
    assert _text(browser, "predict-message").startswith(f"{len(rows):,} rows predicted")
    link = browser.find_element(By.ID, "batch-results").get_attribute("href")
    table = list(csv_module.reader(io.StringIO(requests.get(link, timeout=60).text)))
    assert table[0] == ["row", "label", "setosa", "versicolor", "virginica"]
    assert len(table) == len(rows) + 1
    expected = stack.http.post(f"{stack.api}/models/{model_id}", data="\n".join(rows[:1000]) + "\n",
                               headers={**headers, "Content-Type": "text/csv"}).json()
    assert [line[1] for line in table[1:1001]] == expected["predictions"]
    assert not browser.find_element(By.ID, "results").is_displayed()
