"""The console (`/ui/` on the admin listener) in a real headless browser: Debian's chromium,
driven by Selenium. A gateway of its own, with its resources in a real etcd, so edits
through the console reach the config store."""

import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from openai import OpenAI
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import BIN, PROVIDER_KEY, free_port, wait_port

ADMIN_KEY = "adm-console-key"
CALLER = "sk-console-caller"

CONFIG = """
version: 1
server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  admin_keys: [{{key: {admin_key}}}]
  config_store:
    etcd: {{endpoints: ["http://127.0.0.1:{etcd}"], prefix: "/aigw-console"}}
provider_keys:
  - {{name: mock, provider: openai_compatible, base_url: "http://127.0.0.1:{mock}/v1", api_key: "{provider_key}"}}
models:
  - {{name: chat, provider_key: mock, model: mock-gpt, pricing: {{input_per_mtok: 1, output_per_mtok: 1}}}}
  - {{name: down, provider_key: mock, model: "x?status=503"}}
  - {{name: spare, provider_key: mock, model: "y?status=503"}}
  - name: flaky
    routing: {{targets: [{{model: down}}, {{model: spare, priority: 1}}], failures_before_cooldown: 1, cooldown_s: 120}}
budgets:
  - {{name: console-daily, usd: 5, period: day}}
  - {{name: console-cents, usd: 0.000005, period: day}}
api_keys:
  - {{name: console, key: "{caller}", owner: team-console, budget: console-daily}}
  - {{name: cents, key: sk-console-cents, owner: team-cents, budget: console-cents}}
  # A name an attacker with config access might choose: shown as text, never run.
  - {{name: "<img id=xss src=x onerror=document.title='owned'>", key: sk-console-xss, owner: "<b id=xss2>x</b>"}}
"""


@pytest.fixture(scope="module")
def console():
    etcd_port, peer, mock_port, port, admin = (free_port() for _ in range(5))
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        def spawn(args, port, what):
            p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p, what)

        try:
            spawn(
                ["etcd", "--name", "console", "--data-dir", f"{tmp}/etcd",
                 "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"console=http://127.0.0.1:{peer}"],
                etcd_port, "etcd",
            )
            spawn([BIN, "mock-upstream", "--listen", f"127.0.0.1:{mock_port}", "--api-key", PROVIDER_KEY,
                   "--threads", "1"], mock_port, "mock upstream")
            cfg = Path(tmp) / "aigw.yaml"
            cfg.write_text(CONFIG.format(port=port, admin=admin, admin_key=ADMIN_KEY, etcd=etcd_port,
                                         mock=mock_port, provider_key=PROVIDER_KEY, caller=CALLER))
            subprocess.run([BIN, "import", "--config", str(cfg)], check=True, capture_output=True)
            spawn([BIN, "serve", "--config", str(cfg)], port, "gateway")
            wait_port(admin, procs[-1], "admin listener")
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
        finally:
            for p in procs:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2400"]:
        opts.add_argument(arg)
    # The system's chromedriver, matched to its chromium: Selenium downloads nothing.
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(browser, condition, what, timeout=10):
    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda d: condition(d), message=what)


def text(browser, css):
    # The console redraws its tables on every refresh: an element found may be replaced
    # before its text is read. Read again (the redraw is done by then).
    for _ in range(10):
        try:
            return " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, css))
        except StaleElementReferenceException:
            continue
    return ""


def test_console_shows_traffic_cooldowns_and_validation_errors(console, browser):
    gateway, admin = console
    browser.get(f"{admin}/ui/")
    # A wrong key: refused, and the console stays closed.
    browser.find_element(By.ID, "login-key").send_keys("not-the-key")
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, lambda d: "not an admin key" in d.find_element(By.ID, "login-error").text, "the refusal")
    assert not browser.find_element(By.ID, "console").is_displayed()

    browser.find_element(By.ID, "login-key").send_keys(ADMIN_KEY)
    browser.find_element(By.ID, "login-button").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "console").is_displayed(), "the console")
    assert "etcd" in browser.find_element(By.ID, "config-line").text
    wait_for(browser, lambda d: "<img id=xss" in text(d, "table#keys"), "the hostile key name, as text")
    assert "<b id=xss2>x</b>" in text(browser, "table#keys")
    assert browser.find_elements(By.ID, "xss") == [] and browser.find_elements(By.ID, "xss2") == []
    assert browser.title != "owned"

    # A request just sent shows up in the traffic table, by alias and by owner, and its
    # cost in the spend table.
    client = OpenAI(base_url=f"{gateway}/v1", api_key=CALLER, max_retries=0)
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    row = 'table#traffic tr[data-model="chat"]'
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the chat row")
    cells = browser.find_elements(By.CSS_SELECTOR, row + " td")
    assert cells[0].text == "chat" and cells[6].text == "1", [c.text for c in cells]
    assert "team-console" in text(browser, "table#owners")
    wait_for(browser, lambda d: "console-daily" in text(d, "table#spend"), "the spend row")
    # A budget under a cent: the millionths of a dollar spent show as such, not as 0 beside
    # "used 100%".
    OpenAI(base_url=f"{gateway}/v1", api_key="sk-console-cents", max_retries=0).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}])
    cents = [None]

    def cents_row(d):
        # Read in one script: the table is rebuilt every second, so elements found one by
        # one can go stale between two reads.
        rows = d.execute_script(
            "return [...document.querySelectorAll('table#spend tr')]"
            ".map(r => [...r.querySelectorAll('td')].map(c => c.textContent.trim()))")
        cents[0] = next((r for r in rows if r and r[0] == "console-cents"), None)
        return cents[0] is not None and cents[0][4] not in ("", "0")

    wait_for(browser, cents_row, "the spend under a cent")
    assert cents[0][3].endswith("100%") and cents[0][4].startswith("0.0000"), cents[0]
    assert cents[0][5] == "0.000005", cents[0]

    # A scripted failure: the target cools down, and the console says for how long.
    target = 'table#routes tr[data-model="flaky"][data-target="down"]'
    assert "ready" in text(browser, target)
    with pytest.raises(Exception):
        client.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
    wait_for(browser, lambda d: "cooling" in text(d, target), "the cooldown")
    assert "cooling 1" in text(browser, target)  # 120 s, counting down

    # A bad edit: every validation error shown in place, nothing written.
    browser.find_element(By.ID, "edit-name").send_keys("broken")
    body = browser.find_element(By.ID, "edit-body")
    body.send_keys(json.dumps({"provider_key": "nowhere", "rate_limit": "none-such"}))
    browser.find_element(By.ID, "edit-save").click()
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#edit-errors li"), "the errors")
    errors = text(browser, "#edit-errors li")
    assert "models/broken.provider_key" in errors and "models/broken.rate_limit" in errors, errors
    # Fixed, it saves, and the new alias is served and shown.
    body.clear()
    body.send_keys(json.dumps({"provider_key": "mock", "model": "mock-fresh"}))
    browser.find_element(By.ID, "edit-save").click()
    wait_for(browser, lambda d: "saved" in d.find_element(By.ID, "edit-result").text, "the save")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'table#routes tr[data-model="broken"]'), "the new route")


def test_console_assets_forbid_inline_script_and_framing(console):
    import urllib.request

    _, admin = console
    with urllib.request.urlopen(f"{admin}/ui/") as r:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert b"<script src=\"/ui/app.js\"" in r.read()
    # The data needs the admin key.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{admin}/admin/v1/status")
    assert e.value.code == 401
