#!/usr/bin/env python3
"""test_monitor.py - the web monitor (/ui on http-mgmt-port) in Debian's headless Chromium.

One pmtad relays real traffic to t/lib/testsmtpd.py: 6 recipients delivered (ok.test),
2 bounced (550, bounce.test), 2 deferred (450, defer.test), and 1 answered "421 ... rate
limit exceeded" (throttled.test, whose smtp-pattern-list puts the queue in backoff).
Chromium (driven over the DevTools protocol, t/lib/cdp.py) opens /ui as an `operator`:
  - the totals on the page equal `pmtactl --json show status`'s, and the last hour's
    per-minute chart adds up to them (received, delivered, deferred, bounced);
  - the top queues, the queue in backoff with its mode event and the reply that caused
    it, the recent errors (the 550 reply) and the virtual MTA's source IP are shown;
  - a mouse click on "pause" for defer.test pauses it (pmtactl says so, and the page, whose
    "held back by" column names the pause);
  - the page is saved as test_monitor.png in the build directory (a CI artefact).
Then the rules of the actions, over plain HTTP: a `monitor` client (127.0.0.3) gets no
CSRF token and 403 on POST; POST without the token, with a foreign Origin or with a
Host that is a DNS name gets 403; GET on /ui/action gets 405. After a reload that makes
127.0.0.1 a `monitor` client, the page shows no buttons.
"""
import json
import os
import re
import subprocess
import sys
import time

from pmtatest import Pmta, Tap, build_dir, free_port, http_request, require_root, wait_for
from testsmtpd import TestSmtpd

CHROMIUM = "/usr/bin/chromium"
tap = Tap()


def pmtactl(p, *args):
    r = subprocess.run([os.path.join(build_dir(), "tools", "pmtactl"), "-c", p.config_path,
                        "--json"] + list(args), capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout) if r.stdout.strip() else {}


def http(port, path, method="GET", source=None, headers=None):
    """(status, parsed JSON or text) of one request to the monitor."""
    status, body = http_request(port, path, method, source, headers)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def send(p, rcpts):
    import smtplib
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as s:
        for rcpt in rcpts:
            s.sendmail("", [rcpt],  # null sender: no DSN traffic of its own
                       "Subject: monitor test\r\n\r\nfor %s\r\n" % rcpt)


def config(p, http_port, rx_port, role):
    return p.write_config("""
http-mgmt-port %(http)d
http-access 127.0.0.1 %(role)s
http-access 127.0.0.3 monitor
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.1 mta1.test.example
</virtual-mta>
<smtp-pattern-list throttling>
    reply /rate limit exceeded/ mode=backoff
</smtp-pattern-list>
<domain *>
    smtp-hosts [127.0.0.1]:%(rx)d
    use-starttls no
    retry-after 1h
    retry-recipients-after 1h
</domain>
<domain throttled.test>
    smtp-pattern-list throttling
    backoff-retry-after 1h
</domain>
""" % {"http": http_port, "rx": rx_port, "role": role})


def page_tests(p, http_port, browser):
    url = "http://127.0.0.1:%d/ui?refresh=1" % http_port
    browser.navigate(url)
    loaded = browser.wait_for("document.body.dataset.refreshed && "
                              "document.querySelector('#queues tbody tr[data-queue]') !== null")
    tap.ok(loaded, "the page loads its data in Chromium")
    tap.ok(browser.evaluate("document.getElementById('role').textContent") == "operator",
           "the page knows the client is an operator")
    # the numbers settle (every recipient has its outcome), then page and pmtactl agree
    status = wait_for(lambda: (lambda s: s if s.get("status", {}).get("delivered") == 6 and
                               s["status"].get("bounced") == 2 and
                               s["status"].get("deferred", 0) >= 3 else None)(
                                   pmtactl(p, "show", "status")), timeout=30)
    tap.ok(status, "pmtactl: 6 delivered, 2 bounced, 3 deferred", pmtactl(p, "show", "status"))
    status = (status or {}).get("status", {})
    browser.evaluate("window.pmtaRefresh()")
    shown = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[id^=tot-],[id^=hour-]')]"
        ".map(e => [e.id, Number(e.dataset.value)]))")
    expect = {"tot-delivered": status.get("delivered"), "tot-bounced": status.get("bounced"),
              "tot-deferred": status.get("deferred"),
              "tot-queued": status.get("recipients", {}).get("queued"),
              "tot-queues_backoff": status.get("queues_backoff")}
    tap.ok(all(shown.get(k) == v for k, v in expect.items()),
           "the page's totals are pmtactl's (delivered, bounced, deferred, queued, backoff)",
           (shown, expect))
    tap.ok(shown.get("hour-delivered") == 6 and shown.get("hour-bounced") == 2 and
           shown.get("hour-deferred") == status.get("deferred") and
           shown.get("hour-received") == 11,
           "the last hour's chart adds up: 11 received, 6 delivered, 2 bounced, the deferrals",
           shown)
    tap.ok(browser.evaluate("document.querySelectorAll('#chart polyline').length") == 4,
           "the chart draws four series")
    text = browser.evaluate("document.body.innerText")
    backoff_row = browser.evaluate(
        "(document.querySelector('#backoff tr[data-queue=\"throttled.test/{default}\"]')"
        " || {}).innerText || ''")
    tap.ok("normal" in backoff_row and "backoff" in backoff_row and
           "rate limit exceeded" in backoff_row,
           "queues in backoff: throttled.test with its mode event and the reply that caused it",
           backoff_row)
    errors = browser.evaluate("document.querySelector('#errors tbody').innerText")
    tap.ok("bounce.test/{default}" in errors and "550" in errors and
           "defer.test/{default}" in errors and "450" in errors,
           "recent errors: the 550 and 450 replies with their queues", errors)
    vmta = browser.evaluate(
        "(document.querySelector('#vmtas tr[data-vmta=\"mta1\"]') || {}).innerText || ''")
    tap.ok("127.0.0.1 enabled" in vmta, "virtual MTAs: mta1 and its source IP, enabled", vmta)
    tap.ok("ok.test/{default}" in text and "defer.test/{default}" in text,
           "top queues are listed")

    # a real click on "pause" for defer.test
    sel = 'button.pause[data-queue="defer.test/{default}"]'
    tap.ok(browser.evaluate("document.querySelector(%s) !== null" % json.dumps(sel)),
           "an operator sees a pause button")
    browser.click(sel)
    paused = wait_for(lambda: [q for q in pmtactl(p, "show", "queues").get("queues", [])
                               if q["name"] == "defer.test/{default}" and q["paused"]], timeout=10)
    tap.ok(paused, "clicking pause pauses the queue (pmtactl show queues)")
    tap.ok(browser.wait_for("(document.querySelector('#queues tr[data-queue=\"defer.test/"
                            "{default}\"] td.state') || {}).textContent === 'paused'"),
           "the page shows the queue paused")
    tap.ok(browser.wait_for("((document.querySelector('#queues tr[data-queue=\"defer.test/"
                            "{default}\"] td.limit') || {}).textContent || '')"
                            ".startsWith('paused')"),
           "the page says what holds the queue back (held back by: paused)")
    shot = os.path.join(build_dir(), "t", "integration", "test_monitor.png")
    browser.screenshot(shot)
    tap.ok(os.path.getsize(shot) > 10000, "screenshot saved: " + shot)


def action_rules(p, http_port):
    st, body = http(http_port, "/ui/session", source="127.0.0.3")
    tap.ok(st == 200 and body["data"] == {"role": "monitor"},
           "a monitor client gets its role and no CSRF token", body)
    st, body = http(http_port, "/ui/session")
    token = body.get("data", {}).get("csrf", "") if st == 200 else ""
    tap.ok(re.fullmatch(r"[0-9a-f]{32}", token or ""), "an operator gets a CSRF token", body)
    resume = "/ui/action?do=resume&queue=defer.test/%7Bdefault%7D"
    st, _ = http(http_port, resume, "POST", source="127.0.0.3", headers={"X-CSRF-Token": token})
    tap.ok(st == 403, "a monitor client gets 403 on POST, even with the token")
    st, _ = http(http_port, resume, "POST")
    tap.ok(st == 403, "POST without the CSRF token: 403")
    st, _ = http(http_port, resume, "POST",
                 headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    tap.ok(st == 403, "POST from a foreign Origin: 403")
    st, _ = http(http_port, resume, "POST",
                 headers={"X-CSRF-Token": token, "Host": "rebound.example:%d" % http_port})
    tap.ok(st == 403, "POST with a DNS name as Host (DNS rebinding): 403")
    st, _ = http(http_port, resume, "GET")
    tap.ok(st == 405, "GET on /ui/action: 405")
    st, body = http(http_port, "/ui/action?do=explode&queue=x", "POST",
                    headers={"X-CSRF-Token": token})
    tap.ok(st == 400, "an unknown action: 400", body)
    st, body = http(http_port, resume, "POST", headers={"X-CSRF-Token": token,
                                                        "Origin": "http://127.0.0.1:%d" % http_port})
    q = [q for q in pmtactl(p, "show", "queues").get("queues", [])
         if q["name"] == "defer.test/{default}"]
    tap.ok(st == 200 and q and not q[0]["paused"],
           "POST resume with the token from the page's origin: the queue runs again", body)
    st, body = http(http_port, "/ui/action?do=mode&mode=backoff&queue=nosuch.test", "POST",
                    headers={"X-CSRF-Token": token})
    tap.ok(st == 409 and "error" in body, "an action on no queue: 409 with pmtad's reason", body)


def monitor_role_page(p, http_port, rx_port, browser):
    config(p, http_port, rx_port, "monitor")
    subprocess.run([os.path.join(build_dir(), "tools", "pmtactl"), "-c", p.config_path,
                    "reload"], capture_output=True, timeout=30)
    tap.ok(wait_for(lambda: http(http_port, "/ui/session")[1].get("data", {}).get("role")
                    == "monitor", timeout=20), "after a reload 127.0.0.1 is a monitor client")
    browser.navigate("http://127.0.0.1:%d/ui?refresh=1" % http_port)
    browser.wait_for("document.body.dataset.refreshed")
    tap.ok(browser.evaluate("document.querySelectorAll('#queues button, #queues select').length")
           == 0 and browser.evaluate("document.getElementById('role').textContent") == "monitor",
           "a monitor client's page has no buttons")


def main():
    require_root(tap)
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(tap.skip_all("needs Debian's chromium (apt-get install chromium)"))
    from cdp import Browser
    http_port, rx_port = free_port(), free_port()
    script = {"rcpt": [["limit", "421 4.7.28 rate limit exceeded, try again later"]]}
    with TestSmtpd(["127.0.0.1:%d" % rx_port], script) as rx, Pmta(name="monitor") as p:
        config(p, http_port, rx_port, "operator")
        p.start()
        send(p, ["ok%d@ok.test" % i for i in range(6)] + ["bad1@bounce.test", "bad2@bounce.test",
                                                           "tmp1@defer.test", "tmp2@defer.test",
                                                           "limit@throttled.test"])
        st, page = http(http_port, "/ui")
        tap.ok(st == 200 and "<title>openpmta monitor</title>" in page,
               "GET /ui serves the page from pmtad")
        st, js = http(http_port, "/ui/monitor.js")
        tap.ok(st == 200 and "pmtaRefresh" in js, "and its script")
        tap.ok(not re.search(r"""(src|href)=["']?(https?:)?//""", page),
               "the page loads nothing from another host")
        with Browser() as browser:
            page_tests(p, http_port, browser)
            action_rules(p, http_port)
            monitor_role_page(p, http_port, rx_port, browser)
        got = [d for d in rx.events("data") if d["size"] > 0]  # not the refused transactions
        tap.ok(len(got) == 6, "the receiver got the 6 deliverable messages", got)
        p.stop()
        tap.ok(not p.sanitizer_reports(), "no sanitizer reports", p.sanitizer_reports())
    sys.exit(tap.done())


if __name__ == "__main__":
    main()
